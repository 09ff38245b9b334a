//! One HTTP request shape of the load tools and how it is sent.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[derive(Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub method: hyper::Method,
    pub path: String,
    pub bearer: Option<String>,
    pub body: Option<String>,
}

pub async fn send(client: &HttpClient, base: &str, s: &Scenario) -> Result<(u16, Bytes), String> {
    let mut req = hyper::Request::builder()
        .method(s.method.clone())
        .uri(format!("{base}{}", s.path));
    if let Some(b) = &s.bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    if s.body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(s.body.clone().unwrap_or_default())))
        .unwrap();
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
