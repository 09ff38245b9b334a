//! `/v1/records/*`: create, read (masked), update (merge patch), erase.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{Operation, Principal, PrincipalKind};
use crate::audit::{AuditEvent, Outcome};
use crate::canary::AccessPath;
use crate::records::{
    self, BankAccountInput, Brand, CardInput, KycInput, RecordData, RecordType, masked_view,
};
use crate::vault::RecordMeta;

/// Takes `subject_ref` out of a body: absent → `None`, null → `Some(None)`.
fn take_subject_ref(body: &mut Map<String, Value>) -> Result<Option<Option<String>>, ApiError> {
    match body.remove("subject_ref") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => records::subject_ref(&s)
            .map(|s| Some(Some(s)))
            .map_err(|e| vec![e].into()),
        Some(_) => Err(ApiError::field("subject_ref", "must be a string")),
    }
}

fn object(body: &JsonBody) -> Result<Map<String, Value>, ApiError> {
    match body.parse::<Value>()? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::field("body", "must be a JSON object")),
    }
}

/// A record as its reader may see it: metadata and the masked fields of
/// the reader's roles (docs/data-model.md, "Views"); never plaintext.
#[derive(Serialize, ToSchema)]
pub struct RecordView {
    pub id: String,
    #[serde(rename = "type")]
    pub record_type: RecordType,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub subject_ref: Option<String>,
    /// The masked fields: which ones depends on the record type and the
    /// reader's roles.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// The masked view of a record for `caller`, with its metadata.
pub(super) fn view(meta: &RecordMeta, data: &RecordData, caller: &Principal) -> RecordView {
    let mut fields = match masked_view(data, &caller.roles) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // The metadata names win over any masked field of the same name.
    for key in [
        "id",
        "type",
        "version",
        "created_at",
        "updated_at",
        "subject_ref",
    ] {
        fields.remove(key);
    }
    RecordView {
        id: meta.id.clone(),
        record_type: meta.record_type,
        version: meta.version,
        created_at: meta.created_at.clone(),
        updated_at: meta.updated_at.clone(),
        subject_ref: meta.subject_ref.clone(),
        fields,
    }
}

/// Loads a record `caller` may see. Another owner's record is "not found",
/// and the attempt is audited as denied.
async fn visible(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    id: &str,
    action: &'static str,
) -> Result<RecordMeta, ApiError> {
    let principal = caller.principal();
    let meta = match state.vault.meta(id) {
        Ok(meta) if principal.sees(&meta.owner) => meta,
        Ok(_) => {
            let event = AuditEvent {
                reason: Some("not the owner".into()),
                ..ctx.event(&principal.id, action, Outcome::Denied).target(id)
            };
            state.record(event).await?;
            return Err(ApiError::NotFound);
        }
        Err(e) => return Err(e.into()),
    };
    if meta.erased_at.is_some() {
        return Err(ApiError::Erased);
    }
    Ok(meta)
}

/// A created card: its tokens and what its owner may see of it.
#[derive(Serialize, ToSchema)]
pub struct CreatedCard {
    /// `card_…`
    pub id: String,
    /// Random token of the record (`tok_…`).
    pub token: String,
    /// Format-preserving PAN token: first 6 and last 4 digits and a random
    /// middle that fails Luhn; `null` for PANs of 13 digits or fewer.
    pub pan_token: Option<String>,
    /// Per-owner fingerprint of the PAN (equal cards, equal fingerprint).
    pub fingerprint: Option<String>,
    pub brand: Option<Brand>,
    pub last4: Option<String>,
    pub exp_month: Option<u8>,
    pub exp_year: Option<u16>,
}

/// A created bank account.
#[derive(Serialize, ToSchema)]
pub struct CreatedBankAccount {
    /// `bank_…`
    pub id: String,
    pub token: String,
    /// Per-owner fingerprint of the IBAN or account number.
    pub fingerprint: Option<String>,
    pub last4: Option<String>,
    pub country: Option<String>,
}

/// A created KYC record.
#[derive(Serialize, ToSchema)]
pub struct CreatedKyc {
    /// `kyc_…`
    pub id: String,
    pub token: String,
    pub version: u64,
}

/// A card created with a publishable key (from a web page): its id (to
/// attach the CVC), its tokens and its brand, last 4 and expiry; nothing
/// else (no fingerprint).
#[derive(Serialize, ToSchema)]
pub struct CollectedCard {
    /// `card_…`
    pub id: String,
    /// Random token of the record (`tok_…`).
    pub token: String,
    /// Format-preserving PAN token; `null` for PANs of 13 digits or fewer.
    pub pan_token: Option<String>,
    pub brand: Option<Brand>,
    pub last4: Option<String>,
    pub exp_month: Option<u8>,
    pub exp_year: Option<u16>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum CreatedRecord {
    Card(CreatedCard),
    Collected(CollectedCard),
    BankAccount(CreatedBankAccount),
    Kyc(CreatedKyc),
}

/// One field of a masked view, typed; `None` when the view leaves it out.
fn masked_field<T: serde::de::DeserializeOwned>(masked: &Value, key: &str) -> Option<T> {
    masked
        .get(key)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// `input`'s schema with an optional `subject_ref` beside its fields.
fn with_subject_ref(input: RefOr<Schema>) -> RefOr<Schema> {
    let subject_ref = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some("^[!-~]+$"))
        .description(Some(
            "The customer id in the payment system: 1 to 128 printable ASCII characters.",
        ))
        .build();
    match input {
        RefOr::T(Schema::Object(mut object)) => {
            object
                .properties
                .insert("subject_ref".to_owned(), subject_ref.into());
            RefOr::T(Schema::Object(object))
        }
        other => other,
    }
}

/// Request bodies that create records: the input type's fields and an
/// optional `subject_ref`. Only the OpenAPI document uses these types; the
/// handler takes `subject_ref` out and parses the rest as the input type,
/// so the document derives from the struct that parses.
macro_rules! new_record_body {
    ($($name:ident: $input:ty),*) => {$(
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                with_subject_ref(<$input as utoipa::PartialSchema>::schema())
            }
        }

        impl ToSchema for $name {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                <$input as ToSchema>::schemas(schemas);
            }
        }
    )*};
}

new_record_body!(NewCard: CardInput, NewBankAccount: BankAccountInput, NewKyc: KycInput);

/// Creates a record of `record_type` from a body of its input fields plus
/// an optional `subject_ref`.
async fn create(
    state: AppState,
    ctx: RequestContext,
    caller: Caller,
    record_type: RecordType,
    body: JsonBody,
) -> Result<(StatusCode, Json<CreatedRecord>), ApiError> {
    state
        .authorize(&caller, Operation::RecordCreate(record_type), &ctx)
        .await?;
    let mut fields = object(&body)?;
    let principal = caller.principal();
    // A page cannot say whose card it is: anyone holding the public key
    // could file cards under another customer. The owner service sets the
    // subject later (PATCH).
    if principal.kind == crate::access::PrincipalKind::Publishable
        && fields.contains_key("subject_ref")
    {
        return Err(ApiError::field(
            "subject_ref",
            "a publishable key cannot set it; the owner service can, with PATCH",
        ));
    }
    let subject_ref = take_subject_ref(&mut fields)?.flatten();
    let data = RecordData::parse(record_type, Value::Object(fields), state.clock.now())?;
    // A publishable key's cards belong to its owner service.
    let owner = principal.acts_for();
    // Concurrent creations may pick the same fresh token (a format-preserving
    // one, for many cards with one PAN); the loser mints new ones and retries.
    let mut attempts = 0;
    let created = loop {
        let created = state
            .vault
            .prepare_create(owner, subject_ref.clone(), &data)?;
        let event = AuditEvent {
            reason: super::collect::creation_note(principal),
            ..ctx
                .event(&principal.id, "record.create", Outcome::Allowed)
                .target(created.meta.id.clone())
        };
        attempts += 1;
        if attempts == 3 {
            state.commit(event, created.tx.clone()).await?;
            break created;
        }
        if state.try_commit(event, created.tx.clone()).await?.is_some() {
            break created;
        }
    };
    let masked = masked_view(&data, &principal.roles);
    let out = match &data {
        // A publishable key's answer reaches a web page: no fingerprint.
        RecordData::Card(_) if principal.kind == PrincipalKind::Publishable => {
            CreatedRecord::Collected(CollectedCard {
                id: created.meta.id,
                token: created.token,
                pan_token: created.pan_token,
                brand: masked_field(&masked, "brand"),
                last4: masked_field(&masked, "last4"),
                exp_month: masked_field(&masked, "exp_month"),
                exp_year: masked_field(&masked, "exp_year"),
            })
        }
        RecordData::Card(_) => CreatedRecord::Card(CreatedCard {
            id: created.meta.id,
            token: created.token,
            pan_token: created.pan_token,
            fingerprint: created.fingerprint,
            brand: masked_field(&masked, "brand"),
            last4: masked_field(&masked, "last4"),
            exp_month: masked_field(&masked, "exp_month"),
            exp_year: masked_field(&masked, "exp_year"),
        }),
        RecordData::BankAccount(_) => CreatedRecord::BankAccount(CreatedBankAccount {
            id: created.meta.id,
            token: created.token,
            fingerprint: created.fingerprint,
            last4: masked_field(&masked, "last4"),
            country: masked_field(&masked, "country"),
        }),
        RecordData::Kyc(_) => CreatedRecord::Kyc(CreatedKyc {
            id: created.meta.id,
            token: created.token,
            version: created.meta.version,
        }),
    };
    Ok((StatusCode::CREATED, Json(out)))
}

/// A merge patch: any JSON object, checked once applied against the
/// record type's schema (`NewCard`, `NewBankAccount`, `NewKyc`). Only the
/// OpenAPI document uses this type.
pub struct MergePatch;

impl utoipa::PartialSchema for MergePatch {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "RFC 7396 merge patch of the record's client-shaped fields and `subject_ref`",
            ))
            .build()
            .into()
    }
}

impl ToSchema for MergePatch {}

/// Stores a card: a payment service, or its publishable key from an
/// allowed origin (the card then belongs to the key's owner service).
#[utoipa::path(post, path = "/v1/records/card", tag = "records", operation_id = "create_card",
    security(("bearer" = [])),
    request_body(content = NewCard, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; tokens and masked fields only. A publishable key gets the `CollectedCard` subset: no `fingerprint`", body = CreatedCard),
        (status = 403, description = "`forbidden`; or a publishable key from an origin it does not allow", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: a publishable key's or client address's limit", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: no unique token could be minted", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_card(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<CreatedRecord>), ApiError> {
    create(state, ctx, caller, RecordType::Card, body).await
}

/// Stores a bank account: an IBAN, or a US account and routing number.
#[utoipa::path(post, path = "/v1/records/bank_account", tag = "records", operation_id = "create_bank_account",
    security(("bearer" = [])),
    request_body(content = NewBankAccount, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; tokens and masked fields only", body = CreatedBankAccount),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: no unique token could be minted", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_bank_account(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<CreatedRecord>), ApiError> {
    create(state, ctx, caller, RecordType::BankAccount, body).await
}

/// Stores a KYC record.
#[utoipa::path(post, path = "/v1/records/kyc", tag = "records", operation_id = "create_kyc",
    security(("bearer" = [])),
    request_body(content = NewKyc, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = CreatedKyc),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: no unique token could be minted", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_kyc(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<CreatedRecord>), ApiError> {
    create(state, ctx, caller, RecordType::Kyc, body).await
}

/// The masked view of a record.
#[utoipa::path(get, path = "/v1/records/{id}", tag = "records", operation_id = "read_record",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id")),
    responses(
        (status = 200, description = "Masked view", body = RecordView),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such record, or another owner's", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn read(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RecordView>, ApiError> {
    state
        .authorize_on(&caller, Operation::RecordRead, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    let meta = visible(&state, &ctx, &caller, &id, "record.read").await?;
    let opened = state.vault.open(&meta)?;
    let principal = caller.principal();
    let outcome = state.touched(&ctx, principal, AccessPath::Read, &meta, &opened);
    state
        .record(ctx.event(&principal.id, "record.read", outcome).target(id))
        .await?;
    Ok(Json(view(&meta, &opened.data, principal)))
}

/// Applies a JSON merge patch; the record gets a new version under a new DEK.
#[utoipa::path(patch, path = "/v1/records/{id}", tag = "records", operation_id = "update_record",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id")),
    request_body(content(
        (MergePatch = "application/merge-patch+json"),
        (MergePatch = "application/json"),
    ), description = "RFC 7396 merge patch of the record's fields (`null` removes an optional field) and of `subject_ref`"),
    responses(
        (status = 200, description = "Masked view of the new version", body = RecordView),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such record, or another owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`legal_hold`: a legal hold is placed on the record or its subject, nothing changed; or `conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<RecordView>, ApiError> {
    state
        .authorize_on(&caller, Operation::RecordUpdate, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    let mut patch = object(&body)?;
    let meta = visible(&state, &ctx, &caller, &id, "record.update").await?;
    let principal = caller.principal();
    // A legal hold keeps the record as it is: a change could overwrite its
    // values or move it out of a held subject (and then erase it). Checked
    // before anything is opened; the holds' absence is a precondition of
    // the commit, so one placed meanwhile wins.
    let Some(guard) = super::subjects::hold_guard(&state, &meta.id, meta.subject_ref.as_deref())?
    else {
        let event = ctx
            .event(&principal.id, "record.update", Outcome::Allowed)
            .target(id);
        return Err(super::subjects::refuse_held(&state, event).await);
    };
    let subject_ref = take_subject_ref(&mut patch)?.unwrap_or_else(|| meta.subject_ref.clone());
    let current = state.vault.open(&meta)?;
    records::refuse_security_codes(&Value::Object(patch.clone()))?;
    let mut merged = current.data.as_input_json();
    records::merge_patch(&mut merged, &Value::Object(patch));
    let data = RecordData::parse(meta.record_type, merged, state.clock.now())?;
    let (updated, tx) = state
        .vault
        .prepare_update(&meta, &current, &data, subject_ref)?;
    let outcome = state.touched(&ctx, principal, AccessPath::Update, &meta, &current);
    let event = ctx
        .event(&principal.id, "record.update", outcome)
        .target(id);
    // A hold placed since the check is answered `legal_hold`, as it is
    // for an erasure.
    super::subjects::commit_guarded(
        &state,
        event,
        tx.merge(guard),
        &meta.id,
        meta.subject_ref.as_deref(),
    )
    .await?;
    Ok(Json(view(&updated, &data, principal)))
}

/// Erases a record: its sealed data, DEK and index entries are destroyed;
/// its tokens answer 410 `erased` from now on.
#[utoipa::path(delete, path = "/v1/records/{id}", tag = "records", operation_id = "erase_record",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id")),
    responses(
        (status = 204, description = "Erased"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such record, or another owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`legal_hold`: a legal hold is placed on the record or its subject, nothing erased; or `conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`: already erased", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn erase(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .authorize_on(&caller, Operation::RecordErase, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    let meta = visible(&state, &ctx, &caller, &id, "record.erase").await?;
    let event = ctx
        .event(&caller.principal().id, "record.erase", Outcome::Allowed)
        .target(id.clone());
    let Some(tx) = super::subjects::guarded_erasure(&state, &meta)? else {
        return Err(super::subjects::refuse_held(&state, event).await);
    };
    // An erased card's CVC goes with it, before the erasure is written: a
    // client that hangs up during the commit cannot leave it behind (and
    // if the erasure fails, the CVC is only gone early).
    state.cvcs.discard(&id);
    super::subjects::commit_guarded(&state, event, tx, &meta.id, meta.subject_ref.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
