//! The conflist is checked before anything is written: a runtime that
//! finds a broken one in its conf dir fails every pod on the node, so a
//! ConfigMap with a typo must stop the install, not reach the node.

/// Why `text` would not load as a CNI network configuration list.
/// Checks what libcni checks before it runs a plugin: a JSON object with
/// a non-empty `name` and a non-empty `plugins` list whose entries are
/// objects with a non-empty `type`.
pub fn check(text: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or("not a JSON object (a conflist is {\"name\": ..., \"plugins\": [...]})")?;
    match obj.get("name").and_then(|n| n.as_str()) {
        Some(n) if !n.is_empty() => {}
        _ => return Err("no \"name\" (a non-empty string)".into()),
    }
    let plugins = match obj.get("plugins") {
        None => {
            return Err(
                "no \"plugins\" list (a single-plugin .conf is not a conflist: wrap it in \"plugins\": [...])"
                    .into(),
            );
        }
        Some(p) => p.as_array().ok_or("\"plugins\" is not a list")?,
    };
    if plugins.is_empty() {
        return Err("\"plugins\" is empty".into());
    }
    for (i, p) in plugins.iter().enumerate() {
        match p.get("type").and_then(|t| t.as_str()) {
            Some(t) if !t.is_empty() => {}
            _ => return Err(format!("plugins[{i}] has no \"type\" (a non-empty string)")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_kube_flannels_conflist() {
        let text = include_bytes!("../../../../dist/10-flannel.conflist");
        assert_eq!(check(text), Ok(()));
    }

    #[test]
    fn refuses_what_a_runtime_would() {
        let cases: [(&str, &str); 8] = [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"plugins":[{"type":"flannel"}]}"#, "\"name\""),
            (r#"{"name":"x","type":"flannel"}"#, "no \"plugins\""),
            (r#"{"name":"x","plugins":{}}"#, "not a list"),
            (r#"{"name":"x","plugins":[]}"#, "empty"),
            (r#"{"name":"x","plugins":[{"type":"a"},{}]}"#, "plugins[1]"),
            (r#"{"name":"x","plugins":[7]}"#, "plugins[0]"),
        ];
        for (text, want) in cases {
            match check(text.as_bytes()) {
                Err(e) => assert!(e.contains(want), "{text}: {e:?} lacks {want:?}"),
                Ok(()) => panic!("{text} was accepted"),
            }
        }
    }
}
