//! Datasets, batching and augmentation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A supported dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Cifar100,
    Cifar10,
    FashionMnist,
    Synthetic,
}

impl DatasetName {
    pub const NAMES: &'static [&'static str] = &["cifar100", "cifar10", "fashion-mnist", "synthetic"];
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = [Self::Cifar100, Self::Cifar10, Self::FashionMnist, Self::Synthetic]
            .iter()
            .position(|d| d == self)
            .expect("listed");
        f.write_str(Self::NAMES[i])
    }
}

/// A dataset name that is not supported.
#[derive(Debug, thiserror::Error)]
#[error("unknown dataset '{0}': expected one of cifar100, cifar10, fashion-mnist, synthetic")]
pub struct UnknownDataset(pub String);

impl FromStr for DatasetName {
    type Err = UnknownDataset;

    fn from_str(s: &str) -> Result<DatasetName, UnknownDataset> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| UnknownDataset(s.to_owned()))
    }
}
