//! PostgreSQL: the StartupMessage of protocol 3.0 (the module doc of `proto`,
//! PostgreSQL).

use super::{at, find, text, Parsed};
use crate::fields::bounds::{PG_LENGTH_MAX, PG_NAME_MAX};
use crate::fields::Text;

pub(super) fn parse(w: &[u8]) -> Option<Parsed> {
    let (len, version) = match w.get(..8)? {
        &[a, b, c, d, e, f, g, h] => (u32::from_be_bytes([a, b, c, d]), [e, f, g, h]),
        _ => return None,
    };
    if !(8..=PG_LENGTH_MAX).contains(&len) || version != [0, 3, 0, 0] {
        return None;
    }
    let end = (len as usize).min(w.len());
    let params = w.get(..end)?;
    let mut user = None;
    let mut database = None;
    let mut i = 8;
    while i < end && at(params, i) != Some(0) {
        let Some(key_end) = find(params, i, &[0]) else {
            break;
        };
        let Some(value_end) = find(params, key_end + 1, &[0]) else {
            break;
        };
        let value = || text(params, key_end + 1, value_end - (key_end + 1), PG_NAME_MAX);
        match params.get(i..key_end) {
            // The last key of a name counts, as in PostgreSQL's ProcessStartupPacket.
            Some(b"user") => user = Some(value()),
            Some(b"database") => database = Some(value()),
            _ => {}
        }
        i = value_end + 1;
    }
    let mut parsed = Parsed::default();
    parsed.set(Text::PgUser, user.flatten());
    parsed.set(Text::PgDatabase, database.flatten());
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::proto::tests::{field, fields, pad};
    use crate::fields::bounds::PG_WINDOW;
    use crate::fields::Proto;

    /// A StartupMessage with these NUL-terminated key/value pairs, its length word right.
    fn startup(params: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = vec![0, 3, 0, 0];
        for (k, v) in params {
            body.extend_from_slice(k);
            body.push(0);
            body.extend_from_slice(v);
            body.push(0);
        }
        body.push(0);
        let len = (body.len() + 4) as u32;
        [len.to_be_bytes().to_vec(), body].concat()
    }

    fn pg(m: &[u8]) -> Option<Vec<(Text, Vec<u8>)>> {
        fields(Proto::Pg, m)
    }

    fn user(m: &[u8]) -> Option<Vec<u8>> {
        field(Proto::Pg, Text::PgUser, m)
    }

    fn database(m: &[u8]) -> Option<Vec<u8>> {
        field(Proto::Pg, Text::PgDatabase, m)
    }

    /// What psql 15.18 sends for `psql -h 127.0.0.1 -U alice shop` (captured, PGSSLMODE=disable,
    /// stdin not a terminal).
    const PSQL: &[u8] =
        b"\x00\x00\x00\x38\x00\x03\x00\x00user\x00alice\x00database\x00shop\x00application_name\x00psql\x00\x00";

    #[test]
    fn psql_startup() {
        assert_eq!(PSQL.len(), 0x38);
        assert_eq!(
            PSQL,
            startup(&[
                (b"user", b"alice"),
                (b"database", b"shop"),
                (b"application_name", b"psql"),
            ])
        );
        assert_eq!(
            pg(PSQL),
            Some(vec![
                (Text::PgUser, b"alice".to_vec()),
                (Text::PgDatabase, b"shop".to_vec()),
            ])
        );
    }

    #[test]
    fn every_truncation_of_psql() {
        // `alice`'s NUL is at 18, `shop`'s at 32.
        assert_eq!(PSQL[18], 0);
        assert_eq!(&PSQL[28..33], b"shop\0");
        for n in 0..=PSQL.len() {
            let m = &PSQL[..n];
            assert_eq!(pg(m).is_some(), n >= 8, "{n}");
            assert_eq!(user(m).is_some(), n >= 19, "{n}");
            assert_eq!(database(m).is_some(), n >= 33, "{n}");
        }
    }

    #[test]
    fn order_and_absence() {
        let m = startup(&[(b"database", b"d"), (b"user", b"u")]);
        assert_eq!(user(&m), Some(b"u".to_vec()));
        assert_eq!(database(&m), Some(b"d".to_vec()));
        let m = startup(&[(b"user", b"u")]);
        assert_eq!(pg(&m), Some(vec![(Text::PgUser, b"u".to_vec())]));
        let m = startup(&[]);
        assert_eq!(pg(&m), Some(vec![]));
        let m = startup(&[(b"options", b"-c x=1"), (b"user", b"u"), (b"x", b"")]);
        assert_eq!(user(&m), Some(b"u".to_vec()));
        // Keys are exact: no case folding, no prefixes.
        let m = startup(&[(b"User", b"u"), (b"users", b"v"), (b"DATABASE", b"d")]);
        assert_eq!(pg(&m), Some(vec![]));
        // A key equal to `user` as a value is not a key.
        let m = startup(&[(b"application_name", b"user"), (b"database", b"d")]);
        assert_eq!(pg(&m), Some(vec![(Text::PgDatabase, b"d".to_vec())]));
    }

    #[test]
    fn last_key_of_a_name_decides() {
        let m = startup(&[(b"user", b"a"), (b"user", b"b")]);
        assert_eq!(user(&m), Some(b"b".to_vec()));
        let m = startup(&[(b"user", b"b"), (b"user", b"")]);
        assert_eq!(user(&m), None);
        let long = vec![b'x'; 64];
        let m = startup(&[(b"user", b"b"), (b"user", &long), (b"database", b"d")]);
        assert_eq!(user(&m), None);
        assert_eq!(database(&m), Some(b"d".to_vec()));
    }

    #[test]
    fn name_bounds() {
        for (n, ok) in [(1, true), (62, true), (63, true), (64, false)] {
            let v = vec![b'N'; n];
            let m = startup(&[(b"user", &v), (b"database", &v)]);
            assert_eq!(user(&m), ok.then(|| v.clone()), "{n}");
            assert_eq!(database(&m), ok.then(|| v.clone()), "{n}");
        }
    }

    #[test]
    fn header() {
        let mut m = startup(&[(b"user", b"u")]);
        assert!(pg(&m).is_some());
        for (i, b) in [(4, 1), (5, 2), (6, 1), (7, 1)] {
            let mut bad = m.clone();
            bad[i] = b;
            assert_eq!(pg(&bad), None, "{i}");
        }
        // An SSLRequest and a CancelRequest are not StartupMessages.
        assert_eq!(pg(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), None);
        assert_eq!(
            pg(b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x01\x00\x00\x00\x02"),
            None
        );
        // Length word bounds: 8 to 10000.
        for (len, ok) in [
            (0u32, false),
            (7, false),
            (8, true),
            (10000, true),
            (10001, false),
            (u32::MAX, false),
        ] {
            m[..4].copy_from_slice(&len.to_be_bytes());
            assert_eq!(pg(&m).is_some(), ok, "{len}");
        }
        assert_eq!(pg(b"\x00\x00\x00\x08\x00\x03\x00\x00"), Some(vec![]));
        assert_eq!(pg(b"\x00\x00\x00\x08\x00\x03\x00"), None);
    }

    #[test]
    fn the_length_word_ends_the_parameters() {
        let m = startup(&[(b"user", b"u"), (b"database", b"d")]);
        // `u`'s NUL at 14 is inside a length of 15, not of 14.
        assert_eq!(m[14], 0);
        for (len, ok) in [(14u32, false), (15, true)] {
            let mut short = m.clone();
            short[..4].copy_from_slice(&len.to_be_bytes());
            assert_eq!(user(&short).is_some(), ok, "{len}");
            assert_eq!(database(&short), None, "{len}");
        }
        // Beyond the length word: nothing, even when the bytes are there.
        let mut m = startup(&[]);
        m.pop();
        m.extend_from_slice(b"user\0u\0\0");
        assert_eq!(pg(&m), Some(vec![]));
        // A length word larger than the message: the message's end.
        let mut m = startup(&[(b"user", b"u")]);
        m[..4].copy_from_slice(&10000u32.to_be_bytes());
        assert_eq!(user(&m), Some(b"u".to_vec()));
    }

    #[test]
    fn window_bounds_the_parameters() {
        // A `user` whose NUL is the window's last byte (511), then one byte further.
        let filler = |n: usize| vec![b'f'; n];
        let msg = |n: usize| startup(&[(b"application_name", &filler(n)), (b"user", b"u")]);
        let base = msg(0).len() - 2; // index of `u`'s NUL with no filler
        let n = PG_WINDOW as usize - 1 - base;
        assert_eq!(msg(n)[PG_WINDOW as usize - 1], 0);
        assert_eq!(user(&msg(n)), Some(b"u".to_vec()));
        assert_eq!(user(&msg(n + 1)), None);
        assert_eq!(user(&pad(&msg(n), 2000)), Some(b"u".to_vec()));
    }
}
