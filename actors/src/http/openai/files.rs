//! `/v1/files`: upload (multipart, streamed to disk, at most
//! [`MAX_FILE_BYTES`](myco_jobs::files::MAX_FILE_BYTES)), list, retrieve, content and delete,
//! over the node's [`FileStore`]. OpenAI's objects and errors; the node's token gates them as
//! every route.

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use myco_jobs::files::{DEFAULT_EXPIRY_SECS, FileMeta, FileStore, MAX_FILE_BYTES, UPLOAD_PURPOSES};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{bad_request, error};
use crate::node::handle::NodeHandle;

pub(super) fn store(node: &NodeHandle) -> FileStore {
    FileStore::of_home(node.home())
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("id"),
        "file_not_found",
        format!("No such File object: {id}"),
    )
}

fn io_error(e: std::io::Error) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        None,
        "storage",
        format!("the node's file store: {e}"),
    )
}

/// A blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io_error),
        Err(e) => Err(io_error(std::io::Error::other(e.to_string()))),
    }
}

/// `POST /v1/files`: the `file` part streams to disk; `purpose` (`batch`) and
/// `expires_after[anchor]`/`expires_after[seconds]` come as text parts, in any order.
pub async fn upload(State(node): State<NodeHandle>, mut form: Multipart) -> Response {
    let store = store(&node);
    let id = match myco_jobs::files::new_id() {
        Ok(id) => id,
        Err(e) => return io_error(e),
    };
    let path = match store.upload_path(&id) {
        Ok(p) => p,
        Err(e) => return io_error(e),
    };
    // Whatever goes wrong below, a half-written upload does not stay.
    struct Cleanup(Option<std::path::PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut cleanup = Cleanup(None);
    let (mut purpose, mut filename, mut seconds) = (None, None, None);
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return error(
                    e.status(),
                    "invalid_request_error",
                    None,
                    "invalid_body",
                    format!("cannot read the upload: {}", e.body_text()),
                );
            }
        };
        match field.name().unwrap_or("") {
            "file" => {
                filename = Some(field.file_name().unwrap_or("upload").to_owned());
                cleanup.0 = Some(path.clone());
                let mut out = match tokio::fs::File::create(&path).await {
                    Ok(f) => f,
                    Err(e) => return io_error(e),
                };
                let mut bytes = 0u64;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            bytes += chunk.len() as u64;
                            if bytes > MAX_FILE_BYTES {
                                return error(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "invalid_request_error",
                                    Some("file"),
                                    "file_too_large",
                                    format!(
                                        "the file is over the {} MiB a file may be; split the requests into several batches",
                                        MAX_FILE_BYTES >> 20
                                    ),
                                );
                            }
                            if let Err(e) = out.write_all(&chunk).await {
                                return io_error(e);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return error(
                                e.status(),
                                "invalid_request_error",
                                Some("file"),
                                "invalid_body",
                                format!("cannot read the file: {}", e.body_text()),
                            );
                        }
                    }
                }
                if let Err(e) = out.sync_all().await {
                    return io_error(e);
                }
            }
            name @ ("purpose" | "expires_after[anchor]" | "expires_after[seconds]") => {
                let name = name.to_owned();
                let text = match field.text().await {
                    Ok(t) => t,
                    Err(e) => return bad_request(&name, format!("cannot read `{name}`: {e}")),
                };
                match name.as_str() {
                    "purpose" => purpose = Some(text),
                    "expires_after[anchor]" if text != "created_at" => {
                        return bad_request(&name, "the anchor is `created_at`".into());
                    }
                    "expires_after[seconds]" => match text.trim().parse::<u64>() {
                        Ok(s) if (3600..=2_592_000).contains(&s) => seconds = Some(s),
                        _ => {
                            return bad_request(
                                &name,
                                "seconds between 3600 (an hour) and 2592000 (30 days)".into(),
                            );
                        }
                    },
                    _ => {}
                }
            }
            // Other parts are OpenAI's that myco has no use for.
            _ => {}
        }
    }
    let Some(filename) = filename else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("file"),
            "missing_required_parameter",
            "Missing required parameter: 'file'.".into(),
        );
    };
    let purpose = match purpose {
        Some(p) if UPLOAD_PURPOSES.contains(&p.as_str()) => p,
        Some(p) => {
            return bad_request(
                "purpose",
                format!(
                    "`{p}` files have no use here: myco keeps files for batches (purpose `batch`)"
                ),
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("purpose"),
                "missing_required_parameter",
                "Missing required parameter: 'purpose'.".into(),
            );
        }
    };
    let expires_at = Some(myco_jobs::files::unix_now() + seconds.unwrap_or(DEFAULT_EXPIRY_SECS));
    let id2 = id.clone();
    match blocking(move || store.commit(&id2, &filename, &purpose, expires_at)).await {
        Ok(meta) => {
            cleanup.0 = None;
            tracing::info!(file = %meta.id, bytes = meta.bytes, "file uploaded");
            Json(meta.object()).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    after: Option<String>,
}

/// A page of a list as OpenAI's cursor pages have it: the items after `after`, at most
/// `limit`, with `has_more` (clients page until it is false).
pub(super) fn page<T>(
    items: Vec<T>,
    id: impl for<'a> Fn(&'a T) -> &'a str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, bool) {
    let start = after
        .and_then(|a| items.iter().position(|t| id(t) == a).map(|i| i + 1))
        .unwrap_or(if after.is_some() { items.len() } else { 0 });
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    let more = start + page.len() < total;
    (page, more)
}

/// `GET /v1/files`: newest first (`order=asc` for oldest first), `purpose` to filter.
pub async fn list(State(node): State<NodeHandle>, Query(q): Query<ListQuery>) -> Response {
    let store = store(&node);
    let mut files = match blocking(move || store.list()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(p) = &q.purpose {
        files.retain(|f| &f.purpose == p);
    }
    match q.order.as_deref() {
        None | Some("desc") => {}
        Some("asc") => files.reverse(),
        Some(other) => return bad_request("order", format!("`{other}` is not `asc` or `desc`")),
    }
    let limit = q.limit.unwrap_or(10_000).clamp(1, 10_000);
    let (files, more) = page(
        files,
        |f: &FileMeta| f.id.as_str(),
        q.after.as_deref(),
        limit,
    );
    Json(json!({
        "object": "list",
        "data": files.iter().map(FileMeta::object).collect::<Vec<_>>(),
        "first_id": files.first().map(|f| f.id.clone()),
        "last_id": files.last().map(|f| f.id.clone()),
        "has_more": more,
    }))
    .into_response()
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    let store = store(&node);
    let id2 = id.clone();
    match blocking(move || store.get(&id2)).await {
        Ok(Some(meta)) => Json(meta.object()).into_response(),
        Ok(None) => not_found(&id),
        Err(r) => r,
    }
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    let store = store(&node);
    let id2 = id.clone();
    match blocking(move || store.delete(&id2)).await {
        Ok(true) => Json(json!({ "id": id, "object": "file", "deleted": true })).into_response(),
        Ok(false) => not_found(&id),
        Err(r) => r,
    }
}

/// `GET /v1/files/{id}/content`: the bytes, streamed.
pub async fn content(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    let store = store(&node);
    let id2 = id.clone();
    let path = match blocking(move || store.path(&id2)).await {
        Ok(Some(p)) => p,
        Ok(None) => return not_found(&id),
        Err(r) => return r,
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return not_found(&id),
        Err(e) => return io_error(e),
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let mut response = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(file)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn pages_follow_the_cursor() {
        fn id(s: &String) -> &str {
            s
        }
        let items: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let names = |(v, more): (Vec<String>, bool)| (v.join(","), more);
        assert_eq!(
            names(page(items.clone(), id, None, 2)),
            ("a,b".into(), true)
        );
        assert_eq!(
            names(page(items.clone(), id, Some("b"), 2)),
            ("c,d".into(), true)
        );
        assert_eq!(
            names(page(items.clone(), id, Some("d"), 2)),
            ("e".into(), false)
        );
        assert_eq!(
            names(page(items.clone(), id, Some("e"), 2)),
            ("".into(), false)
        );
        // A cursor that is gone (deleted since) ends the listing rather than looping.
        assert_eq!(names(page(items, id, Some("zz"), 2)), ("".into(), false));
    }
}
