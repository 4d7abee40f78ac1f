//! Who holds a reservation: the content of an address file, byte-compatible
//! with the reference plugin (`<containerID>\r\n<ifname>`, or the container
//! ID alone in files written by old versions).

const LINE_BREAK: &str = "\r\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    /// `None` for the old container-ID-only files.
    pub ifname: Option<String>,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Owner {
        Owner {
            container_id: container_id.trim().to_string(),
            ifname: Some(ifname.to_string()),
        }
    }

    /// Reads a file's content as the reference does: surrounding whitespace
    /// ignored, the first CRLF separating container ID and ifname.
    pub fn parse(content: &str) -> Owner {
        let content = content.trim();
        match content.split_once(LINE_BREAK) {
            Some((id, ifname)) => Owner {
                container_id: id.to_string(),
                ifname: Some(ifname.to_string()),
            },
            None => Owner {
                container_id: content.to_string(),
                ifname: None,
            },
        }
    }

    pub fn file_content(&self) -> String {
        match &self.ifname {
            Some(ifname) => format!("{}{LINE_BREAK}{ifname}", self.container_id),
            None => self.container_id.clone(),
        }
    }

    /// The attachment's reservation: the exact pair, or an old file naming
    /// only the container.
    pub fn belongs_to(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_layouts_and_ignores_surrounding_whitespace() {
        assert_eq!(Owner::parse("abc\r\neth0"), Owner::new("abc", "eth0"));
        assert_eq!(Owner::parse("  abc\r\neth0\n"), Owner::new("abc", "eth0"));
        let old = Owner::parse("abc\n");
        assert_eq!((old.container_id.as_str(), old.ifname), ("abc", None));
        assert_eq!(Owner::new("abc", "eth0").file_content(), "abc\r\neth0");
    }

    #[test]
    fn ownership() {
        assert!(Owner::parse("abc\r\neth0").belongs_to("abc", "eth0"));
        assert!(!Owner::parse("abc\r\neth0").belongs_to("abc", "eth1"));
        assert!(Owner::parse("abc").belongs_to("abc", "eth1"));
        assert!(!Owner::parse("abcd").belongs_to("abc", "eth0"));
    }
}
