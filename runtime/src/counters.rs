//! Reading `skp_counters`, the per-CPU array of (messages, bytes) per rule: one raw
//! lookup per slot into a buffer sized once for the possible CPUs. (aya's
//! `PerCpuArray::get` reads the possible-CPU list from sysfs and the map's info on every
//! call: about 3 ms a slot, five minutes for a policy of 100,000 rules.)

use std::os::fd::AsFd;

use aya::maps::Map;

use crate::enforce::CounterValue;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The counters of every slot, summed over the CPUs, named by `names` (`#i` past them).
pub(crate) fn read(counters: &Map, names: &[String]) -> Result<Vec<CounterValue>> {
    let Map::PerCpuArray(data) = counters else {
        return Err(Error::new(
            ErrorKind::BadObject,
            "skp_counters is not a PERCPU_ARRAY map; rebuild the object with skpc",
        ));
    };
    let info = data
        .info()
        .map_err(|e| Error::from_aya("reading the definition of skp_counters", e))?;
    if info.value_size() != 16 {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "skp_counters has {}-byte values, this runtime reads 16 (messages, bytes); build the object with the skpc of this runtime",
                info.value_size()
            ),
        ));
    }
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| Error::io(format_args!("reading the possible CPUs ({what})"), e))?;
    // The kernel writes value_size (16, already 8-aligned) bytes per possible CPU.
    let mut per_cpu = vec![0u64; 2 * cpus];
    let fd = data.fd().as_fd();
    let mut out = Vec::with_capacity(info.max_entries() as usize);
    for i in 0..info.max_entries() {
        sys::map_lookup_into(fd, &i.to_ne_bytes(), &mut per_cpu)
            .map_err(|e| Error::io(format_args!("reading slot {i} of skp_counters"), e))?;
        let (messages, bytes) = per_cpu
            .chunks_exact(2)
            .fold((0u64, 0u64), |(m, b), c| (m + c[0], b + c[1]));
        out.push(CounterValue {
            name: names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{i}")),
            messages,
            bytes,
        });
    }
    Ok(out)
}
