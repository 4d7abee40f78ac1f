//! Matching the kernel's answers to the requests they answer: by sequence
//! number (requests sent together are numbered consecutively) and by our
//! port id, so that late answers to earlier requests are skipped.

use netlink_packet_core::{NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN};

use super::frame::{self, Frame};
use super::{KernelError, NetlinkError};

/// How the kernel answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `NLM_F_ACK`: replies if any, then an ACK or an error.
    Ack,
    /// `NLM_F_DUMP`: parts, then DONE (or an error).
    Dump,
    /// Nothing unless it fails (nf_tables batch members): an error if any,
    /// or an ACK the kernel may send but need not.
    ErrorOnly,
}

/// What became of one request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Replies (dump parts, a GET's answer), whole messages.
    pub replies: Vec<Vec<u8>>,
    /// The final verdict: ACK or DONE (`Ok`), or the error; `None` while
    /// none came.
    pub result: Option<Result<(), KernelError>>,
    /// A reply carried `NLM_F_DUMP_INTR`: the dump is not a consistent
    /// snapshot.
    pub interrupted: bool,
}

#[derive(Debug)]
pub struct Collector {
    first: u32,
    port: u32,
    kinds: Vec<Answer>,
    outcomes: Vec<Outcome>,
    /// Requests that must still be answered (Ack and Dump ones).
    open: usize,
}

impl Collector {
    /// For requests numbered `first`.. sent from port `port`.
    pub fn new(first: u32, port: u32, kinds: Vec<Answer>) -> Collector {
        let open = kinds.iter().filter(|k| **k != Answer::ErrorOnly).count();
        let outcomes = kinds.iter().map(|_| Outcome::default()).collect();
        Collector {
            first,
            port,
            kinds,
            outcomes,
            open,
        }
    }

    /// Every request that must be answered was.
    pub fn done(&self) -> bool {
        self.open == 0
    }

    /// Takes in one received datagram.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<(), NetlinkError> {
        for f in frame::frames(datagram)? {
            self.take(&f)?;
        }
        Ok(())
    }

    fn take(&mut self, f: &Frame<'_>) -> Result<(), NetlinkError> {
        if f.port != self.port {
            return Ok(()); // not an answer to this socket's requests
        }
        let index = f.seq.wrapping_sub(self.first) as usize;
        let (Some(out), Some(kind)) = (self.outcomes.get_mut(index), self.kinds.get(index)) else {
            return Ok(()); // a late answer to an earlier exchange
        };
        if out.result.is_some() {
            return Ok(()); // already answered in full
        }
        if f.flags & NLM_F_DUMP_INTR != 0 {
            out.interrupted = true;
        }
        match f.ty {
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => {
                return Err(NetlinkError::Decode(
                    "the kernel reported NLMSG_OVERRUN".into(),
                ));
            }
            NLMSG_ERROR | NLMSG_DONE => {
                out.result = Some(frame::verdict(f));
                if *kind != Answer::ErrorOnly {
                    self.open -= 1;
                }
            }
            _ => out.replies.push(f.bytes.to_vec()),
        }
        Ok(())
    }

    pub fn finish(self) -> Vec<Outcome> {
        self.outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nlsock::frame::tests::{error, message};
    use netlink_packet_core::NLM_F_MULTIPART;

    const PORT: u32 = 4242;

    fn done(seq: u32, flags: u16) -> Vec<u8> {
        message(
            NLMSG_DONE,
            NLM_F_MULTIPART | flags,
            seq,
            PORT,
            &0i32.to_ne_bytes(),
        )
    }

    #[test]
    fn a_dump_collects_its_parts_until_done_and_skips_what_is_not_its_own() {
        let mut c = Collector::new(10, PORT, vec![Answer::Dump]);
        let mut d = message(0x18, NLM_F_MULTIPART, 10, PORT, &[1; 4]);
        d.extend(message(0x18, NLM_F_MULTIPART, 9, PORT, &[2; 4])); // an earlier request's
        d.extend(message(0x18, NLM_F_MULTIPART, 10, PORT + 1, &[3; 4])); // another socket's
        d.extend(message(0x18, NLM_F_MULTIPART, 11, PORT, &[4; 4])); // not sent yet
        c.feed(&d).unwrap();
        assert!(!c.done());
        c.feed(&message(0x18, NLM_F_MULTIPART, 10, PORT, &[5; 4]))
            .unwrap();
        c.feed(&done(10, 0)).unwrap();
        assert!(c.done());
        let out = c.finish();
        assert_eq!(out[0].replies.len(), 2);
        assert_eq!(out[0].replies[1][16..], [5; 4]);
        assert_eq!(out[0].result, Some(Ok(())));
        assert!(!out[0].interrupted);
    }

    #[test]
    fn an_interrupted_dump_is_flagged_whichever_part_says_so() {
        for (part, end) in [(NLM_F_DUMP_INTR, 0), (0, NLM_F_DUMP_INTR)] {
            let mut c = Collector::new(1, PORT, vec![Answer::Dump]);
            c.feed(&message(0x18, NLM_F_MULTIPART | part, 1, PORT, &[0; 4]))
                .unwrap();
            c.feed(&done(1, end)).unwrap();
            assert!(c.done());
            assert!(c.finish()[0].interrupted);
        }
    }

    #[test]
    fn acks_and_errors_end_requests_and_error_only_ones_need_no_answer() {
        let kinds = vec![
            Answer::Ack,
            Answer::ErrorOnly,
            Answer::ErrorOnly,
            Answer::Ack,
        ];
        let mut c = Collector::new(u32::MAX, PORT, kinds);
        // Numbers wrap: u32::MAX, 0, 1, 2.
        let mut d = error(u32::MAX, PORT, 0, None);
        d.extend(error(0, PORT, nix::libc::ENOENT, Some("No such chain")));
        c.feed(&d).unwrap();
        assert!(!c.done());
        c.feed(&error(2, PORT, nix::libc::EEXIST, None)).unwrap();
        assert!(c.done(), "the error-only request 1 never answered");
        // A second verdict for a finished request changes nothing.
        c.feed(&error(2, PORT, 0, None)).unwrap();
        let out = c.finish();
        assert_eq!(out[0].result, Some(Ok(())));
        let e = out[1].result.clone().unwrap().unwrap_err();
        assert_eq!(
            (e.errno, e.message.as_deref()),
            (nix::libc::ENOENT, Some("No such chain"))
        );
        assert!(out[2].result.is_none());
        assert_eq!(
            out[3].result.clone().unwrap().unwrap_err().errno,
            nix::libc::EEXIST
        );
    }

    #[test]
    fn a_reply_before_the_ack_is_kept() {
        let mut c = Collector::new(5, PORT, vec![Answer::Ack]);
        let mut d = message(0x10, 0, 5, PORT, &[7; 8]);
        d.extend(error(5, PORT, 0, None));
        c.feed(&d).unwrap();
        assert!(c.done());
        assert_eq!(c.finish()[0].replies.len(), 1);
    }
}
