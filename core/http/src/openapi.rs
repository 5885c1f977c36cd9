//! The API's OpenAPI 3.1 document, made from the handlers' `#[utoipa::path]`
//! attributes and the records' `ToSchema` derives, so it changes with the
//! code. `GET /v1/openapi.json` serves it; `openapi.json` at the crate's
//! root is the committed copy a test keeps equal to it.

use crate::error::ErrorBody;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::Ref;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stepgraph",
        description = "Create, find, wait for, cancel and repair tasks; read templates, workers, stats, health and metrics. \
                       Every error is a JSON object `{\"error\": message}`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "tasks", description = "Create, find, read, wait for and cancel tasks (scopes read and write)"),
        (name = "schedules", description = "Cron schedules: a template's task at each tick (read; write to change)"),
        (name = "repair", description = "An operator's repairs (scope admin), each recorded with who and why"),
        (name = "system", description = "Templates, workers, counts, health, metrics and this document"),
    ),
)]
struct ApiDoc;

/// The document of every route `routes` holds, as served and committed.
pub fn document() -> Document {
    let (_, paths) = crate::routes().split_for_parts();
    let mut doc = ApiDoc::openapi().merge_from(paths);
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Security.modify(&mut doc);
    CommonErrors.modify(&mut doc);
    doc
}

/// [`document`] as pretty JSON with a final newline (the committed form).
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

pub(crate) const PATH: &str = "/v1/openapi.json";

/// This document. It needs no token: it describes the API, holds no data.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "system",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")),
)]
pub(crate) async fn serve_document() -> impl axum::response::IntoResponse {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        TEXT.get_or_init(document_json).as_str(),
    )
}

/// Bearer tokens (see `stepgraph tokens new`), required everywhere unless
/// an operation says otherwise; an API with no tokens configured ignores them.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from the server's configuration; scopes read < write < admin",
                    ))
                    .build(),
            ),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The errors any operation can answer, added to each instead of repeated
/// in every attribute: 401 and 403 where a token is needed, 503 when the
/// database or queue cannot be reached, 400 for a malformed id or query.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut Document) {
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if path == PATH {
                continue;
            }
            let ops = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                let r = &mut op.responses.responses;
                let mut add = |status: &str, why: &str| {
                    r.entry(status.into()).or_insert_with(|| error(why));
                };
                add(
                    "401",
                    "No token, a malformed Authorization header, or an unknown token",
                );
                add("403", "The token's scope does not allow this");
                if path.starts_with("/v1/") {
                    add("400", "A malformed id, query parameter or body");
                    add("503", "The database or queue cannot be reached; retry");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy is what the code makes. After changing the API:
    /// `STEPGRAPH_BLESS=1 cargo test -p stepgraph-http committed_document`
    /// (or `stepgraph openapi > core/http/openapi.json`).
    #[test]
    fn committed_document_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let made = document_json();
        if std::env::var_os("STEPGRAPH_BLESS").is_some() {
            std::fs::write(path, &made).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert!(
            committed == made,
            "core/http/openapi.json is stale: run `STEPGRAPH_BLESS=1 cargo test -p stepgraph-http committed_document`"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/tasks",
            "/v1/tasks/{id}/steps/{step}/resolve",
            "/health",
            PATH,
        ] {
            assert!(paths.contains_key(path), "{path} is missing");
        }
        let op = &paths["/v1/tasks/{id}/retry"]["post"];
        for status in ["200", "400", "401", "403", "404", "409", "503"] {
            assert!(
                op["responses"].get(status).is_some(),
                "retry does not document {status}"
            );
        }
    }
}
