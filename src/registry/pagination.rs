//! `n`/`last` pagination shared by the tag list and the catalog: entries sorted lexically,
//! those after `last`, at most `n`; when more remain, a `Link` header names the next page.

use hyper::header;
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::Body;
use super::errors::{Code, RegistryError};

/// Most entries in one page, whatever `n` asks (a client follows `Link` for the rest).
pub const MAX_PAGE: usize = 1000;

/// A page request parsed from a query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// At most this many entries; `None` means as many as `MAX_PAGE`.
    pub n: Option<usize>,
    /// Only entries sorting after this one.
    pub last: Option<String>,
}

impl Page {
    pub fn parse(query: Option<&str>) -> Result<Page, RegistryError> {
        let mut page = Page::default();
        for (key, value) in query_pairs(query, true) {
            match key {
                "n" => {
                    let n = value.parse::<usize>().map_err(|_| {
                        RegistryError::new(
                            Code::PaginationNumberInvalid,
                            "n must be a non-negative integer",
                        )
                        .detail(json!({ "n": super::router::truncate(&value) }))
                    })?;
                    page.n = Some(n);
                }
                "last" => page.last = Some(value),
                _ => {}
            }
        }
        Ok(page)
    }

    /// How many entries this page holds at most.
    pub fn limit(&self) -> usize {
        self.n.unwrap_or(MAX_PAGE).min(MAX_PAGE)
    }

    /// The entries of this page, and whether more follow it.
    pub fn select<'a>(&self, sorted: &'a [String]) -> (&'a [String], bool) {
        let from = match &self.last {
            Some(last) => sorted.partition_point(|e| e.as_str() <= last.as_str()),
            None => 0,
        };
        let rest = &sorted[from..];
        let n = self.limit();
        if n == 0 {
            // Nothing asked for; a next link would lead nowhere new.
            (&rest[..0], false)
        } else if rest.len() > n {
            (&rest[..n], true)
        } else {
            (rest, false)
        }
    }
}

/// A JSON list response with a `Link` to the next page when there is one.
pub fn respond(
    path: &str,
    page: &Page,
    all: &[String],
    document: impl FnOnce(&[String]) -> serde_json::Value,
) -> Result<Response<Body>, RegistryError> {
    let (entries, more) = page.select(all);
    let body = serde_json::to_vec(&document(entries)).map_err(|e| {
        tracing::error!(error = %e, "serialize list");
        RegistryError::new(Code::Unknown, "internal error writing the list")
    })?;
    let mut response = super::document(StatusCode::OK, "application/json", body.into());
    if let (true, Some(last)) = (more, entries.last()) {
        let link = format!(
            "<{path}?n={}&last={}>; rel=\"next\"",
            page.limit(),
            percent_encode(last)
        );
        response
            .headers_mut()
            .insert(header::LINK, super::header_value(&link)?);
    }
    Ok(response)
}

/// The `key=value` pairs of a query string, values percent-decoded; `plus_is_space` reads `+`
/// as forms write a space (right for names and numbers, wrong for media types, which hold
/// `+`).
pub(super) fn query_pairs(query: Option<&str>, plus_is_space: bool) -> Vec<(&str, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key, percent_decode(value, plus_is_space))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+`, if asked, as a space); a bad escape stays as it is.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') if plus_is_space => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Names and tags only hold `[A-Za-z0-9._/-]`; escape anything else to be safe in a URL.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_follow_last_and_n() {
        let all = list(&["a", "b", "c", "d"]);
        let page = |q: &str| Page::parse(Some(q)).expect("parse");
        assert_eq!(page("").select(&all), (&all[..], false));
        assert_eq!(page("n=2").select(&all), (&all[..2], true));
        assert_eq!(page("n=2&last=b").select(&all), (&all[2..], false));
        assert_eq!(page("last=bb").select(&all), (&all[2..], false));
        assert_eq!(page("last=z").select(&all), (&all[4..], false));
        assert_eq!(page("n=0").select(&all), (&all[..0], false));
        assert_eq!(page("n=5000").select(&all), (&all[..], false));
        assert_eq!(page("last=a%2Fb").last.as_deref(), Some("a/b"));
        assert_eq!(page("last=100%").last.as_deref(), Some("100%"));
        for bad in ["n=-1", "n=x", "n=", "n=1e3"] {
            assert_eq!(
                Page::parse(Some(bad)).map(|_| ()).map_err(|e| e.code),
                Err(Code::PaginationNumberInvalid),
                "{bad}"
            );
        }
    }
}
