//! Query strings, decoded the one way every route reads them: as HTTP
//! clients and browsers encode them (`application/x-www-form-urlencoded`:
//! `%XX` escapes, `+` for a space), empty pairs skipped, a key without `=`
//! read with an empty value.

use std::borrow::Cow;

/// The `(key, value)` pairs of `query`, decoded.
pub fn pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    form_urlencoded::parse(query.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_as_clients_encode_them() {
        let got: Vec<(String, String)> = pairs("a=1&&b=x%2Cy&c&d=two+words%2B&e=%zz")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let want = [
            ("a", "1"),
            ("b", "x,y"),
            ("c", ""),
            ("d", "two words+"),
            ("e", "%zz"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want);
    }
}
