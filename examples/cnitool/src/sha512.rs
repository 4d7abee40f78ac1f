//! SHA-512 for the container ID Go's cnitool derives from the netns path
//! (sha2, which bridge already uses, so it adds nothing to the tree).

use sha2::{Digest, Sha512};

pub fn digest(data: &[u8]) -> [u8; 64] {
    Sha512::digest(data).into()
}

/// Lower-case hex, as Go's `%x` prints bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected digests as coreutils' sha512sum prints them.
    #[test]
    fn known_digests() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"abc",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
            (
                b"",
                "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
            ),
            (
                // 112 bytes: the padding needs a second block.
                b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
                "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
            ),
            (
                b"/run/netns/foo",
                "254dc2c1a36160f60f590bbbffeedfee6dc50d7dec9ea2dcdcfbee6844ec784102fa4fbf6fdc459360e3b7a7f320df737643c42fe202f7b7b9988ca56d884b01",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&digest(input)), want, "{input:?}");
        }
        let thousand = vec![b'a'; 1000];
        assert_eq!(
            hex(&digest(&thousand)),
            "67ba5535a46e3f86dbfbed8cbbaf0125c76ed549ff8b0b9e03e0c88cf90fa634fa7b12b47d77b694de488ace8d9a65967dc96df599727d3292a8d9d447709c97"
        );
    }
}
