//! The operator console (`--console`): a few server-rendered pages under `/console` for the
//! questions an operator asks of a running pipeline. Where did this message go (look it up
//! by id or idempotency key)? What failed and why (dead letters by entity and error, and
//! their replay)? Is it keeping up (live rates and lag)?
//!
//! Plain HTML and one small script, no front-end build. Behind the same API keys as the
//! API: HTTP Basic with the key as password, so a browser asks for it (a Bearer header
//! works too). It reads the status table, the stream, the workers' consumer and the
//! dead-letter stream; like the rest of nats-api it knows no entity, and shows names as
//! the workers recorded them.

use std::collections::HashSet;
use std::fmt::Write as _;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::Engine as _;
use nomnom_runtime::{IdempotencyKey, dlq};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    error::ApiError,
    state::AppState,
    status::{self, StatusResponse},
};

/// Dead letters listed on one page, newest first; the filters narrow a longer list.
pub const DEAD_LETTERS_SHOWN: usize = 200;

/// How the browser is asked for a key.
const CHALLENGE: &str = r#"Basic realm="nomnom console", charset="UTF-8""#;

/// Scripts and styles only from the console itself; no frames, no foreign forms.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The console's routes; merged into the app when `--console` is set.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/message", get(message))
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/replay", post(replay))
        .route("/console/live", get(live))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
        .route_layer(middleware::from_fn_with_state(state, require_key))
        .layer(middleware::from_fn(secure_headers))
}

/// Middleware: with API keys configured, a request must present one, as the password of
/// HTTP Basic (what a browser sends once asked) or as a Bearer token.
async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let keys = state.current_api_keys();
    if !keys.is_enabled() || presented_key(request.headers()).is_some_and(|k| keys.accepts(&k)) {
        return next.run(request).await;
    }
    metrics::counter!("ingest_auth_failures_total").increment(1);
    let mut response = page_response(
        StatusCode::UNAUTHORIZED,
        "Sign in",
        "<p>The console needs an API key: sign in with any user name and the key as \
         password.</p>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    response
}

/// The key of `Authorization: Bearer <key>` (as the API takes it) or of
/// `Authorization: Basic <user:key>`.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = crate::auth::bearer_key(headers) {
        return Some(key.to_owned());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let (_user, key) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        return Some(key.to_owned());
    }
    None
}

/// Middleware: headers that keep the pages from being framed, sniffed or cached.
async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /console`: live figures, the lookup form, and the way to the dead letters.
async fn overview(State(state): State<AppState>) -> Response {
    let figures = figures(&state).await;
    let mut body = String::new();
    body.push_str(&lookup_form(""));
    body.push_str(&live_section(&state, &figures));
    page_response(StatusCode::OK, "Overview", &body)
}

/// `GET /console/message?q=<message id or idempotency key>`.
#[derive(Debug, Deserialize)]
struct LookupQuery {
    #[serde(default)]
    q: String,
}

async fn message(State(state): State<AppState>, Query(query): Query<LookupQuery>) -> Response {
    let asked = query.q.trim();
    let mut body = lookup_form(asked);
    if asked.is_empty() {
        body.push_str("<p class=\"error\">Type a message id or an idempotency key.</p>");
        return page_response(StatusCode::BAD_REQUEST, "Look up a message", &body);
    }
    // A message id is a UUID; anything else is read as the idempotency key the client
    // sent (which maps to its id, UUIDv5, with no index to ask).
    let id = match Uuid::parse_str(asked) {
        Ok(id) => id,
        Err(_) => match IdempotencyKey::parse(asked) {
            Ok(key) => key.message_id(),
            Err(err) => {
                let _ = write!(
                    body,
                    "<p class=\"error\">{} is neither a message id nor an idempotency key: {}</p>",
                    escape(&format!("{asked:?}")),
                    escape(&err.to_string())
                );
                return page_response(StatusCode::BAD_REQUEST, "Look up a message", &body);
            }
        },
    };
    match status::find(&state, id).await {
        Ok(found) => {
            body.push_str(&status_table(&found));
            page_response(StatusCode::OK, "Look up a message", &body)
        }
        Err(err) => {
            let code = err.status();
            if let ApiError::Internal(detail) = &err {
                tracing::error!(error = %detail, "console lookup failed");
            }
            let _ = write!(
                body,
                "<p class=\"error\" id=\"lookup-error\">{}</p>",
                escape(&err.detail().message)
            );
            page_response(code, "Look up a message", &body)
        }
    }
}

/// `GET /console/dead-letters?entity=&error=`: the newest dead letters that match, each
/// with a box to select it for replay.
#[derive(Debug, Default, Deserialize)]
struct DeadLetterQuery {
    #[serde(default)]
    entity: String,
    #[serde(default)]
    error: String,
    replayed: Option<usize>,
    missing: Option<usize>,
}

async fn dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadLetterQuery>,
) -> Response {
    let entity = query.entity.trim();
    let error = query.error.trim();
    let filter = dlq::Filter {
        entity: (!entity.is_empty()).then(|| entity.to_owned()),
        error_contains: (!error.is_empty()).then(|| error.to_owned()),
        ..Default::default()
    };
    let mut body = String::new();
    if let Some(replayed) = query.replayed {
        let _ = write!(
            body,
            "<p class=\"notice\" id=\"replayed\">Replayed {replayed} message(s): each is back in \
             the stream under its own id, and a worker will process it again.</p>"
        );
    }
    if let Some(missing) = query.missing.filter(|&m| m > 0) {
        let _ = write!(
            body,
            "<p class=\"error\">{missing} selected message(s) were no longer dead letters \
             (replayed already?).</p>"
        );
    }
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/console/dead-letters\" class=\"filters\">\
         <label>Entity <input name=\"entity\" value=\"{}\"></label> \
         <label>Error contains <input name=\"error\" value=\"{}\"></label> \
         <button type=\"submit\">Filter</button></form>",
        escape(entity),
        escape(error)
    );
    let letters = match dlq::list_newest(
        state.publisher.jetstream(),
        &state.config.dlq_stream,
        &filter,
        DEAD_LETTERS_SHOWN,
    )
    .await
    {
        Ok(letters) => letters,
        // No worker has started yet: no dead letters, and nothing wrong with the console.
        Err(err @ dlq::DlqError::Missing { .. }) => {
            let _ = write!(
                body,
                "<p id=\"no-dead-letters\">No dead letters: {}.</p>",
                escape(&err.to_string())
            );
            return page_response(StatusCode::OK, "Dead letters", &body);
        }
        Err(err) => {
            tracing::warn!(error = %err, "console: cannot read the dead-letter stream");
            let _ = write!(
                body,
                "<p class=\"error\">Cannot read the dead-letter stream {}: {}</p>",
                escape(&state.config.dlq_stream),
                escape(&err.to_string())
            );
            return page_response(StatusCode::SERVICE_UNAVAILABLE, "Dead letters", &body);
        }
    };
    if letters.is_empty() {
        body.push_str("<p id=\"no-dead-letters\">No dead letters match.</p>");
        return page_response(StatusCode::OK, "Dead letters", &body);
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/replay\"><p>{} dead letter(s), newest first{}. \
         Fix what made them fail (the spec, the worker, the database), then replay them: \
         <button type=\"submit\" id=\"replay\">Replay selected</button></p>\
         <table id=\"dead-letters\"><thead><tr><th></th><th>Message</th><th>Entity</th>\
         <th>Dead-lettered at</th><th>Attempts</th><th>Error</th><th>Request</th></tr></thead><tbody>",
        letters.len(),
        if letters.len() == DEAD_LETTERS_SHOWN {
            " (the first shown; filter to see others)"
        } else {
            ""
        }
    );
    for letter in &letters {
        let id = letter.message_id.to_string();
        let _ = write!(
            body,
            "<tr><td><input type=\"checkbox\" name=\"message_id\" value=\"{id}\"></td>\
             <td><a href=\"/console/message?q={id}\"><code>{id}</code></a></td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"error-text\">{}</td><td><code>{}</code></td></tr>",
            escape(letter.entity.as_deref().unwrap_or("")),
            escape(&letter.dead_lettered_at),
            letter.attempts,
            escape(&letter.error),
            escape(letter.request_id.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</tbody></table></form>");
    page_response(StatusCode::OK, "Dead letters", &body)
}

/// `POST /console/replay` (a form: `message_id` once per selected dead letter).
async fn replay(State(state): State<AppState>, headers: HeaderMap, form: Bytes) -> Response {
    if !same_origin(&headers) {
        return page_response(
            StatusCode::FORBIDDEN,
            "Replay",
            "<p class=\"error\">A replay must be sent from the console's own page.</p>",
        );
    }
    let mut wanted = HashSet::new();
    for (name, value) in form_urlencoded::parse(&form) {
        if name != "message_id" {
            continue;
        }
        match Uuid::parse_str(value.trim()) {
            Ok(id) => {
                wanted.insert(id);
            }
            Err(_) => {
                let text = format!(
                    "<p class=\"error\">{} is not a message id.</p>",
                    escape(&format!("{value:?}"))
                );
                return page_response(StatusCode::BAD_REQUEST, "Replay", &text);
            }
        }
    }
    if wanted.is_empty() {
        return page_response(
            StatusCode::BAD_REQUEST,
            "Replay",
            "<p class=\"error\">Select at least one dead letter to replay.</p>\
             <p><a href=\"/console/dead-letters\">Back to the dead letters</a></p>",
        );
    }
    let js = state.publisher.jetstream();
    let dlq_stream = &state.config.dlq_stream;
    let outcome = async {
        let mut letters = dlq::list(js, dlq_stream, &dlq::Filter::default()).await?;
        letters.retain(|letter| wanted.contains(&letter.message_id));
        let found: HashSet<Uuid> = letters.iter().map(|l| l.message_id).collect();
        let replayed = dlq::replay_letters(js, dlq_stream, &state.config.stream, &letters).await?;
        Ok::<_, dlq::DlqError>((replayed, wanted.len() - found.len()))
    }
    .await;
    match outcome {
        Ok((replayed, missing)) => {
            tracing::info!(replayed, missing, "console: dead letters replayed");
            Redirect::to(&format!(
                "/console/dead-letters?replayed={replayed}&missing={missing}"
            ))
            .into_response()
        }
        Err(err) => {
            tracing::warn!(error = %err, "console: replay failed");
            let text = format!(
                "<p class=\"error\">The replay stopped: {}. What was replayed before it is \
                 back in the stream; the rest are still dead letters, so replaying again is \
                 safe.</p>",
                escape(&err.to_string())
            );
            page_response(StatusCode::SERVICE_UNAVAILABLE, "Replay", &text)
        }
    }
}

/// A form post from a browser names its origin; it must be this server's (another site's
/// page cannot make a signed-in browser replay). Clients that send no origin at all are
/// not browsers acting for a page, and present their key themselves.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority == host)
}

/// What the live panel shows, read from JetStream at the moment of asking; the page's
/// script turns two readings into rates.
#[derive(Debug, Default, Serialize)]
pub struct Figures {
    /// Milliseconds since the Unix epoch when read.
    pub at_ms: i64,
    pub stream: Option<StreamFigures>,
    pub consumer: Option<ConsumerFigures>,
    pub dead_letters: Option<u64>,
    /// What could not be read, for people.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct StreamFigures {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    /// Grows by one per accepted message: its rate of change is the ingest rate.
    pub last_sequence: u64,
}

#[derive(Debug, Serialize)]
pub struct ConsumerFigures {
    pub name: String,
    /// Messages not yet delivered to any worker: the lag.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: usize,
    pub redelivered: usize,
    /// Every message up to this stream sequence is acknowledged: its rate of change is
    /// the processing rate.
    pub ack_floor: u64,
}

async fn figures(state: &AppState) -> Figures {
    let js = state.publisher.jetstream();
    let mut figures = Figures {
        at_ms: chrono::Utc::now().timestamp_millis(),
        ..Default::default()
    };
    let name = &state.config.stream.name;
    match js.get_stream(name).await {
        Ok(mut stream) => {
            match stream.info().await {
                Ok(info) => {
                    figures.stream = Some(StreamFigures {
                        name: name.clone(),
                        messages: info.state.messages,
                        bytes: info.state.bytes,
                        last_sequence: info.state.last_sequence,
                    });
                }
                Err(err) => figures.problems.push(format!("stream {name}: {err}")),
            }
            let consumer = &state.config.consumer;
            match stream.consumer_info(consumer).await {
                Ok(info) => {
                    figures.consumer = Some(ConsumerFigures {
                        name: consumer.clone(),
                        pending: info.num_pending,
                        ack_pending: info.num_ack_pending,
                        redelivered: info.num_redelivered,
                        ack_floor: info.ack_floor.stream_sequence,
                    });
                }
                Err(err) => figures.problems.push(format!(
                    "consumer {consumer}: {err} (no worker has started yet?)"
                )),
            }
        }
        Err(err) => figures.problems.push(format!("stream {name}: {err}")),
    }
    match dlq::count(js, &state.config.dlq_stream).await {
        Ok(count) => figures.dead_letters = Some(count),
        Err(err) => figures.problems.push(err.to_string()),
    }
    figures
}

/// `GET /console/live`: the figures as JSON, polled by the overview page.
async fn live(State(state): State<AppState>) -> Json<Figures> {
    Json(figures(&state).await)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console/console.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console/console.css"),
    )
}

fn lookup_form(value: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/console/message\" class=\"lookup\">\
         <label for=\"lookup\">Message id or idempotency key</label> \
         <input id=\"lookup\" name=\"q\" size=\"44\" value=\"{}\" autofocus> \
         <button type=\"submit\" id=\"lookup-button\">Look up</button></form>",
        escape(value)
    )
}

fn live_section(state: &AppState, figures: &Figures) -> String {
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "–".to_owned());
    let stream = figures.stream.as_ref();
    let consumer = figures.consumer.as_ref();
    let mut out = String::new();
    let _ = write!(
        out,
        "<section id=\"live\"><h2>Live</h2><table class=\"figures\">\
         <tr><th>Stream {}</th><td><span id=\"stream-messages\">{}</span> messages</td>\
         <td>ingest <span id=\"ingest-rate\">–</span> msg/s</td></tr>\
         <tr><th>Consumer {}</th><td>lag <span id=\"consumer-pending\">{}</span>, \
         unacknowledged <span id=\"consumer-ack-pending\">{}</span>, \
         redelivered <span id=\"consumer-redelivered\">{}</span></td>\
         <td>processed <span id=\"processed-rate\">–</span> msg/s</td></tr>\
         <tr><th>Dead letters</th><td><a href=\"/console/dead-letters\" id=\"dead-letters-count\">{}</a></td><td></td></tr>\
         </table><p class=\"error\" id=\"live-problems\">{}</p></section>",
        escape(&state.config.stream.name),
        or_dash(stream.map(|s| s.messages.to_string())),
        escape(&state.config.consumer),
        or_dash(consumer.map(|c| c.pending.to_string())),
        or_dash(consumer.map(|c| c.ack_pending.to_string())),
        or_dash(consumer.map(|c| c.redelivered.to_string())),
        or_dash(figures.dead_letters.map(|n| n.to_string())),
        escape(&figures.problems.join("; ")),
    );
    out
}

fn status_table(found: &StatusResponse) -> String {
    let mut rows = String::new();
    let mut row = |name: &str, id: &str, value: &str| {
        let _ = write!(
            rows,
            "<tr><th>{name}</th><td id=\"{id}\">{}</td></tr>",
            escape(value)
        );
    };
    row("Message", "message-id", &found.message_id.to_string());
    row("Status", "message-status", found.status);
    row(
        "Entity",
        "message-entity",
        found.entity.as_deref().unwrap_or(""),
    );
    row("Received", "message-received", &found.received_at);
    row(
        "Processed",
        "message-processed",
        found.processed_at.as_deref().unwrap_or(""),
    );
    row(
        "Attempts",
        "message-attempts",
        &found.attempts.map(|a| a.to_string()).unwrap_or_default(),
    );
    row(
        "Stream sequence",
        "message-sequence",
        &found
            .stream_sequence
            .map(|s| s.to_string())
            .unwrap_or_default(),
    );
    row(
        "Error",
        "message-error",
        found.error.as_deref().unwrap_or(""),
    );
    let mut out = format!("<table class=\"message\">{rows}</table>");
    if found.status == "dead_lettered" {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/console/replay\">\
             <input type=\"hidden\" name=\"message_id\" value=\"{}\">\
             <p>Fixed what made it fail? <button type=\"submit\" id=\"replay-one\">Replay it</button></p></form>",
            found.message_id
        );
    }
    out
}

fn page_response(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · nomnom console</title>\
         <link rel=\"stylesheet\" href=\"/console/console.css\"></head><body>\
         <header><strong>nomnom console</strong> <nav><a href=\"/console\">Overview</a> \
         <a href=\"/console/dead-letters\">Dead letters</a></nav></header>\
         <main><h1>{title}</h1>{body}</main>\
         <script src=\"/console/console.js\"></script></body></html>",
        title = escape(title),
    );
    (status, Html(html)).into_response()
}

/// Text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn keys_are_read_from_basic_and_bearer() {
        let mut headers = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret:with:colons");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert_eq!(
            presented_key(&headers).as_deref(),
            Some("s3cret:with:colons")
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert_eq!(presented_key(&headers).as_deref(), Some("k1"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic !!notbase64"),
        );
        assert_eq!(presented_key(&headers), None);
    }

    #[test]
    fn only_same_origin_browser_posts_may_replay() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(same_origin(&headers(&[])), "curl sends no origin");
    }
}
