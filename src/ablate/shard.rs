//! `--shard I/N`: a deterministic share of a plan for one of N processes.

use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count`, 1-based as written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    index: usize,
    count: usize,
}

/// A `--shard` value that is not `I/N` with 1 ≤ I ≤ N.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid shard '{value}': {reason}\nwrite I/N with 1 ≤ I ≤ N, e.g. --shard 2/4")]
pub struct ShardError {
    pub value: String,
    pub reason: String,
}

impl Shard {
    /// Builds shard `index` of `count` (1-based).
    pub fn new(index: usize, count: usize) -> Result<Shard, ShardError> {
        let error = |reason: String| ShardError { value: format!("{index}/{count}"), reason };
        if count == 0 {
            return Err(error("the shard count must be at least 1".into()));
        }
        if index == 0 {
            return Err(error("shards are numbered from 1".into()));
        }
        if index > count {
            return Err(error(format!("shard {index} does not exist out of {count}")));
        }
        Ok(Shard { index, count })
    }

    /// Returns the plan indices of this shard's runs out of `len`: every
    /// `count`-th run starting at `index - 1`. Round-robin rather than blocks,
    /// so that the teachers at the front of a plan spread over the shards.
    pub fn share(&self, len: usize) -> Vec<usize> {
        (self.index - 1..len).step_by(self.count).collect()
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn count(&self) -> usize {
        self.count
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let error = |reason: &str| ShardError { value: s.to_owned(), reason: reason.to_owned() };
        let (i, n) = s.split_once('/').ok_or_else(|| error("missing '/'"))?;
        let parse = |part: &str, what: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| error(&format!("{what} '{part}' is not a whole number")))
        };
        let (index, count) = (parse(i, "shard index")?, parse(n, "shard count")?);
        Shard::new(index, count).map_err(|e| ShardError { value: s.to_owned(), reason: e.reason })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}
