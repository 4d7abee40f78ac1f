//! `resolvConf`: a resolv.conf read into the result's `dns`.

use cni_types::config::Dns;

/// Parses resolv.conf text: `nameserver`, `domain`, `search` and `options`
/// lines; comments (`#`, `;`) and anything else are ignored.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with(['#', ';']) {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), rest) = (fields.next(), fields.collect::<Vec<_>>()) else {
            continue;
        };
        let Some(first) = rest.first() else {
            continue;
        };
        let owned = || rest.iter().map(|s| s.to_string());
        match key {
            "nameserver" => dns.nameservers.push(first.to_string()),
            "domain" => dns.domain = first.to_string(),
            "search" => dns.search.extend(owned()),
            "options" => dns.options.extend(owned()),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_four_keys() {
        let dns = parse_resolv_conf(
            "# comment\n; other\nnameserver 10.0.0.10\nnameserver  2001:db8::10 \ndomain example.com\n\
             search a.example b.example\noptions ndots:5 edns0\nsortlist 1.2.3.4\nnameserver\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.10", "2001:db8::10"]);
        assert_eq!(dns.domain, "example.com");
        assert_eq!(dns.search, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }
}
