//! What a client may ask for, and the reasons a request is refused, kept
//! apart from the HTTP plumbing so it can be tested natively.

use serde::Deserialize;

/// Most texts in one request (they run as one batch).
pub const MAX_TEXTS: usize = 32;

/// An endpoint, from the path the function sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/`: embed one text or a list.
    Embed,
    /// `/similarity`: the cosine similarity of two texts.
    Similarity,
}

impl Route {
    /// The route for a path (query string ignored, trailing `/` allowed).
    pub fn of(path_with_query: &str) -> Option<Self> {
        let path = path_with_query
            .split_once('?')
            .map_or(path_with_query, |(path, _)| path);
        match path.trim_end_matches('/') {
            "" => Some(Self::Embed),
            "/similarity" => Some(Self::Similarity),
            _ => None,
        }
    }
}

/// A valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `{"text": "..."}`
    One(String),
    /// `{"texts": [...]}`, 1 to `MAX_TEXTS` of them.
    Many(Vec<String>),
    /// `{"a": "...", "b": "..."}`
    Similarity(String, String),
}

impl Request {
    /// The texts to embed, in order.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Self::One(text) => vec![text],
            Self::Many(texts) => texts.iter().map(String::as_str).collect(),
            Self::Similarity(a, b) => vec![a, b],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    text: Option<String>,
    texts: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimilarityBody {
    a: String,
    b: String,
}

/// Parses and checks a request body for `route`; the error is the reason
/// to give the client.
pub fn parse(route: Route, body: &[u8]) -> Result<Request, String> {
    match route {
        Route::Embed => {
            let body: EmbedBody = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "the body must be JSON {{\"text\": \"...\"}} or {{\"texts\": [\"...\", ...]}}: {e}"
                )
            })?;
            match (body.text, body.texts) {
                (Some(text), None) => Ok(Request::One(text)),
                (None, Some(texts)) if texts.is_empty() => {
                    Err("`texts` must hold at least one text".to_string())
                }
                (None, Some(texts)) if texts.len() > MAX_TEXTS => Err(format!(
                    "`texts` may hold at most {MAX_TEXTS} texts, got {}",
                    texts.len()
                )),
                (None, Some(texts)) => Ok(Request::Many(texts)),
                (Some(_), Some(_)) => Err("give either `text` or `texts`, not both".to_string()),
                (None, None) => Err(
                    "the body must be JSON {\"text\": \"...\"} or {\"texts\": [\"...\", ...]}: \
                     missing field `text`"
                        .to_string(),
                ),
            }
        }
        Route::Similarity => {
            let body: SimilarityBody = serde_json::from_slice(body).map_err(|e| {
                format!("the body must be JSON {{\"a\": \"...\", \"b\": \"...\"}}: {e}")
            })?;
            Ok(Request::Similarity(body.a, body.b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/"), Some(Route::Embed));
        assert_eq!(Route::of(""), Some(Route::Embed));
        assert_eq!(Route::of("/?x=1"), Some(Route::Embed));
        assert_eq!(Route::of("/similarity"), Some(Route::Similarity));
        assert_eq!(Route::of("/similarity/?q"), Some(Route::Similarity));
        assert_eq!(Route::of("/other"), None);
        assert_eq!(Route::of("/similarity/x"), None);
    }

    #[test]
    fn valid_bodies() {
        assert_eq!(
            parse(Route::Embed, br#"{"text": "hi"}"#),
            Ok(Request::One("hi".into()))
        );
        assert_eq!(
            parse(Route::Embed, br#"{"texts": ["a", "b"]}"#),
            Ok(Request::Many(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            parse(Route::Similarity, br#"{"a": "x", "b": "y"}"#),
            Ok(Request::Similarity("x".into(), "y".into()))
        );
        let most = serde_json::json!({ "texts": vec!["t"; MAX_TEXTS] }).to_string();
        assert!(parse(Route::Embed, most.as_bytes()).is_ok());
    }

    #[test]
    fn invalid_bodies_say_why() {
        let too_many = serde_json::json!({ "texts": vec!["t"; MAX_TEXTS + 1] }).to_string();
        let cases: &[(Route, &[u8], &str)] = &[
            (Route::Embed, b"", "must be JSON"),
            (Route::Embed, b"{", "must be JSON"),
            (Route::Embed, b"{}", "missing field `text`"),
            (Route::Embed, br#"{"text": 1}"#, "invalid type"),
            (Route::Embed, br#"{"texts": []}"#, "at least one"),
            (
                Route::Embed,
                too_many.as_bytes(),
                "at most 32 texts, got 33",
            ),
            (
                Route::Embed,
                br#"{"text": "a", "texts": ["b"]}"#,
                "not both",
            ),
            (
                Route::Embed,
                br#"{"text": "a", "x": 1}"#,
                "unknown field `x`",
            ),
            (Route::Similarity, br#"{"a": "x"}"#, "missing field `b`"),
            (
                Route::Similarity,
                br#"{"text": "x"}"#,
                "unknown field `text`",
            ),
        ];
        for (route, body, want) in cases {
            let err = parse(*route, body).expect_err("invalid");
            assert!(
                err.contains(want),
                "{:?}: {err:?} lacks {want:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
