//! The upstream feed: the practice's clinical system posts R4 `transaction`/`batch` Bundles
//! to `POST /upstream` over its own mTLS listener. Each Bundle is applied atomically; a bad
//! entry is named (the clinical system is the practice's own, so the detail helps it fix the
//! feed) and nothing of that Bundle is stored.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{fhir_response, outcome, plain_outcome};
use crate::replica::{IngestError, Replica};

pub struct Upstream {
    // One writer: ingest batches are serialised here, each one SQLite transaction.
    pub replica: Arc<Mutex<Replica>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

impl Upstream {
    pub async fn handle(&self, client: &str, request: Request<Bytes>) -> Response<Bytes> {
        if request.uri().path() != "/upstream" {
            return plain_outcome(StatusCode::NOT_FOUND, "not-found", "No such endpoint.");
        }
        if request.method() != Method::POST {
            return plain_outcome(StatusCode::METHOD_NOT_ALLOWED, "not-supported", "Use POST.");
        }
        let replica = self.replica.clone();
        let body = request.into_body();
        let methods = entry_methods(&body);
        let applied = tokio::task::spawn_blocking(move || match replica.lock() {
            Ok(mut replica) => replica.apply_bundle(&body),
            Err(_) => Err(IngestError::Bundle(
                "the replica writer is unavailable".into(),
            )),
        })
        .await;
        match applied {
            Ok(Ok(summary)) => {
                tracing::info!(
                    client,
                    upserted = summary.upserted,
                    deleted = summary.deleted,
                    purged = summary.purged_patients,
                    "upstream batch applied"
                );
                let body = json!({
                    "resourceType": "Bundle", "type": "transaction-response",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "entry": methods.iter().map(|method| {
                        let status = if method == "DELETE" { "204 No Content" } else { "200 OK" };
                        json!({"response": {"status": status}})
                    }).collect::<Vec<_>>(),
                });
                fhir_response(StatusCode::OK, Bytes::from(body.to_string()), None)
            }
            Ok(Err(IngestError::Replica(e))) => {
                tracing::error!(client, error = %crate::error::Chain(&e), "upstream batch failed in the replica");
                plain_outcome(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "The replica could not store the batch; nothing was applied.",
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(client, error = %crate::error::Chain(&e), "upstream batch rejected");
                fhir_response(
                    StatusCode::BAD_REQUEST,
                    Bytes::from(
                        outcome::unavailable_outcome(
                            "invalid",
                            &format!(
                                "{}; nothing of this batch was applied",
                                crate::error::Chain(&e)
                            ),
                        )
                        .to_string(),
                    ),
                    None,
                )
            }
            Err(_) => plain_outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "Internal error.",
            ),
        }
    }
}

/// The method of each entry, in order, for the transaction-response.
fn entry_methods(body: &[u8]) -> Vec<String> {
    let bundle: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            e["request"]["method"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}
