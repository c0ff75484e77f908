//! The web dashboard: server-rendered pages on the node's API address
//! under `/ui/`, for an operator's browser (no JavaScript build, no
//! backend beyond the node).
//!
//! * [`Sessions`]: how a browser gets in. The API token never goes into a
//!   URL or a page: `zennet dashboard` asks the API (with the token) for a
//!   one-time code and prints `/ui/login?code=…`; the code, redeemed once
//!   within [`CODE_TTL`], becomes a session cookie (`HttpOnly`,
//!   `SameSite=Strict`). Every other `/ui/` route needs that cookie, and
//!   every form that changes something also carries the session's CSRF
//!   token.
//! * [`pages`]: what each page shows, gathered from the same services
//!   and views the JSON API serves (so the numbers are the API's), and
//!   rendered with askama templates (`cli/templates/`), checked at compile
//!   time and escaped by default.
//! * [`history`]: the provider's earnings sampled every minute, for the
//!   chart of vouchered vs settled over time.
//! * [`router`]: the `/ui/` routes, with their own check (the cookie, not
//!   the bearer token) in one middleware over one table, like the API.

pub mod history;
pub mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;

use crate::node::Node;

/// How long a login code from `zennet dashboard` may wait to be used.
pub const CODE_TTL: Duration = Duration::from_secs(300);
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const COOKIE: &str = "zennet_session";

/// Login codes waiting to be redeemed, and the sessions they became.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, Instant>,
    /// Session id → (CSRF token, expiry).
    sessions: HashMap<String, (String, Instant)>,
}

impl Sessions {
    /// A new one-time login code.
    pub fn issue_code(&self) -> String {
        let code = random_hex();
        let mut inner = self.lock();
        let now = Instant::now();
        inner.codes.retain(|_, exp| *exp > now);
        inner.codes.insert(code.clone(), now + CODE_TTL);
        code
    }

    /// Redeems `code` (once, before it expires) for a new session id.
    pub fn redeem(&self, code: &str) -> Option<String> {
        let mut inner = self.lock();
        let now = Instant::now();
        let expiry = inner.codes.remove(code)?;
        if expiry <= now {
            return None;
        }
        inner.sessions.retain(|_, (_, exp)| *exp > now);
        let id = random_hex();
        inner
            .sessions
            .insert(id.clone(), (random_hex(), now + SESSION_TTL));
        Some(id)
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, session: &str) -> Option<String> {
        let inner = self.lock();
        let (csrf, exp) = inner.sessions.get(session)?;
        (*exp > Instant::now()).then(|| csrf.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 32 random bytes as hex.
fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

/// One dashboard route: its path and handlers.
pub type Route = (&'static str, MethodRouter<Arc<Node>>);

/// Every `/ui/` route but the login: the table the cookie check covers.
pub fn routes() -> Vec<Route> {
    vec![
        ("/ui", get(pages::home)),
        ("/ui/", get(pages::home)),
        ("/ui/provider", get(pages::provider)),
        ("/ui/publisher", get(pages::publisher)),
        ("/ui/chain", get(pages::chain)),
        ("/ui/files", get(pages::files)),
        ("/ui/style.css", get(style)),
        ("/ui/provider/tasks/{id}/accept", post(pages::accept)),
        ("/ui/provider/tasks/{id}/reject", post(pages::reject)),
        ("/ui/provider/vms/{id}/stop", post(pages::stop_vm)),
        ("/ui/publisher/tasks/{id}/cancel", post(pages::cancel)),
        (
            "/ui/publisher/tasks/{id}/stop-paying",
            post(pages::stop_paying),
        ),
        (
            "/ui/publisher/vms/{id}/stop",
            post(pages::stop_publisher_vm),
        ),
    ]
}

/// The dashboard: the login route, and every other route behind the
/// session cookie (unknown `/ui/…` paths too).
pub fn router(node: Arc<Node>) -> Router<()> {
    let checked = routes()
        .into_iter()
        .fold(Router::new(), |r, (path, h)| r.route(path, h))
        .route("/ui/{*rest}", get(not_found))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_session,
        ));
    Router::new()
        .route("/ui/login", get(login))
        .merge(checked)
        .with_state(node)
}

#[derive(Deserialize)]
struct LoginQuery {
    code: String,
}

/// Redeems a login code: the session cookie, then the home page.
async fn login(State(node): State<Arc<Node>>, Query(q): Query<LoginQuery>) -> Response {
    match node.dashboard().redeem(&q.code) {
        Some(session) => {
            let cookie = format!(
                "{COOKIE}={session}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_TTL.as_secs()
            );
            let mut resp = Redirect::to("/ui/").into_response();
            resp.headers_mut()
                .insert(header::SET_COOKIE, cookie.parse().expect("a valid header"));
            resp
        }
        None => refused(
            "this login link is used, expired or wrong; run `zennet dashboard` for a new one",
        ),
    }
}

/// The session's CSRF token, for the handlers (inserted by the check).
#[derive(Clone)]
pub struct Csrf(pub String);

async fn require_session(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let session = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_string);
    match session.and_then(|s| node.dashboard().csrf(&s)) {
        Some(csrf) => {
            req.extensions_mut().insert(Csrf(csrf));
            next.run(req).await
        }
        None => refused(
            "the dashboard needs a login: run `zennet dashboard` and open the link it prints",
        ),
    }
}

/// A 401 page with one line.
fn refused(why: &str) -> Response {
    let page = pages::Message {
        title: "Not logged in",
        message: why,
    };
    (StatusCode::UNAUTHORIZED, pages::html(&page)).into_response()
}

async fn not_found() -> Response {
    let page = pages::Message {
        title: "Not found",
        message: "no such dashboard page",
    };
    (StatusCode::NOT_FOUND, pages::html(&page)).into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../templates/style.css"),
    )
        .into_response()
}

/// A form that changes something: it carries the session's CSRF token.
#[derive(Deserialize)]
pub struct ActionForm {
    pub csrf: String,
}

impl ActionForm {
    /// Whether the form's token is the session's.
    pub fn valid(&self, csrf: &Csrf) -> bool {
        crate::api::same_secret(self.csrf.as_bytes(), csrf.0.as_bytes())
    }
}

/// The page after an action: back to `to`, or the error in one line.
pub fn done(to: &str, result: Result<(), String>) -> Response {
    match result {
        Ok(()) => Redirect::to(to).into_response(),
        Err(e) => {
            let page = pages::Message {
                title: "Not done",
                message: &e,
            };
            (StatusCode::BAD_REQUEST, pages::html(&page)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Method;
    use tower::ServiceExt;

    use crate::api::tests::node;

    async fn call(
        app: &Router,
        method: Method,
        uri: &str,
        cookie: Option<&str>,
        body: &str,
    ) -> (StatusCode, String, Option<String>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let set_cookie = resp
            .headers()
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            String::from_utf8_lossy(&body).into_owned(),
            set_cookie,
        )
    }

    /// The attacker is any local process, a guest, or a page in the
    /// operator's browser: without a session every dashboard route (and
    /// unknown ones) answers 401; a login code works once; the API token
    /// is not a session; a form without the session's CSRF token does
    /// nothing.
    #[tokio::test]
    async fn the_dashboard_needs_a_session_and_forms_need_its_csrf_token() {
        let node = node();
        let app = crate::api::router(node.clone(), "t".repeat(64));
        let table = routes();
        assert!(table.len() >= 12);
        let mut paths: Vec<String> = table
            .iter()
            .map(|(p, _)| p.replace("{id}", "0x00"))
            .collect();
        paths.push("/ui/nope".into());
        for path in &paths {
            for method in [Method::GET, Method::POST] {
                for cookie in [
                    None,
                    Some("zennet_session=forged"),
                    Some(&*format!("zennet_session={}", "t".repeat(64))),
                ] {
                    let (status, body, _) =
                        call(&app, method.clone(), path, cookie, "csrf=x").await;
                    assert!(
                        status == StatusCode::UNAUTHORIZED
                            || status == StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} {cookie:?}: {status}"
                    );
                    if status == StatusCode::UNAUTHORIZED {
                        assert!(body.contains("zennet dashboard"), "{body}");
                    }
                }
            }
        }
        // A wrong code, then a right one used twice.
        let (status, _, _) = call(&app, Method::GET, "/ui/login?code=guess", None, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let code = node.dashboard().issue_code();
        let (status, _, cookie) = call(
            &app,
            Method::GET,
            &format!("/ui/login?code={code}"),
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let cookie = cookie.unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let (status, _, again) = call(
            &app,
            Method::GET,
            &format!("/ui/login?code={code}"),
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(again.is_none());
        let session = cookie.split(';').next().unwrap().to_string();
        let (status, body, _) = call(&app, Method::GET, "/ui/chain", Some(&session), "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("Recent blocks"), "{body}");
        // The session is not an API credential either.
        let (status, _, _) = call(&app, Method::GET, "/v1/info", Some(&session), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // A cross-site form carries the cookie at most, never the token.
        let task = format!("0x{}", "11".repeat(32));
        let (status, body, _) = call(
            &app,
            Method::POST,
            &format!("/ui/publisher/tasks/{task}/stop-paying"),
            Some(&session),
            "csrf=forged",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("not from the dashboard"), "{body}");
    }
}
