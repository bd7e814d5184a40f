//! Reading the counters: one ARRAY map of one entry whose value holds every
//! (messages, bytes) pair, one per rule slot (`skpc_abi::COUNTERS_NAME`). One lookup of
//! key 0 reads them all, however many rules the policy has.

use std::os::fd::AsFd;

use aya::maps::Map;
use skpc_abi::{Counter, COUNTERS_NAME};

use crate::enforce::CounterValue;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The map in which objects built before issue 13 kept their counters (a PERCPU_ARRAY
/// of one `Counter` per slot).
pub(crate) const OLD_COUNTERS_NAME: &str = "skp_counters";

/// The error for an object whose counters are not the map this runtime reads.
pub(crate) fn old_layout() -> Error {
    Error::new(
        ErrorKind::BadObject,
        format!(
            "the object keeps its counters in the per-CPU map {OLD_COUNTERS_NAME} of an older skpc; this runtime reads them from the ARRAY {COUNTERS_NAME}: rebuild the object with the skpc of this runtime"
        ),
    )
}

/// The counters of every slot, named by `names` (`#i` past them): the counters maps in
/// chunk order (`skpc_abi::COUNTER_CHUNK_SLOTS`), one lookup each.
pub(crate) fn read(counters: &[Map], names: &[String]) -> Result<Vec<CounterValue>> {
    let mut out = Vec::with_capacity(names.len());
    for map in counters {
        for (messages, bytes) in read_one(map)? {
            let i = out.len();
            out.push(CounterValue {
                name: names.get(i).cloned().unwrap_or_else(|| format!("#{i}")),
                messages,
                bytes,
            });
        }
    }
    Ok(out)
}

/// The (messages, bytes) pairs of one counters map.
fn read_one(counters: &Map) -> Result<Vec<(u64, u64)>> {
    let Map::Array(data) = counters else {
        return Err(old_layout());
    };
    let info = data
        .info()
        .map_err(|e| Error::from_aya(&format!("reading the definition of {COUNTERS_NAME}"), e))?;
    let size = info.value_size() as usize;
    if info.max_entries() != 1 || !size.is_multiple_of(Counter::SIZE) {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "{COUNTERS_NAME} has {} entries of {size} bytes, this runtime reads one entry of 16-byte (messages, bytes) pairs; build the object with the skpc of this runtime",
                info.max_entries()
            ),
        ));
    }
    // u64 words, so that the pairs are read in place (the value is 8-aligned).
    let mut words = vec![0u64; size / 8];
    sys::map_lookup_into(data.fd().as_fd(), &0u32.to_ne_bytes(), &mut words)
        .map_err(|e| Error::io(format_args!("reading {COUNTERS_NAME}"), e))?;
    Ok(words.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}
