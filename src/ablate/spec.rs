//! Ablation suites as written in `ablations/<name>.toml`, parsed and checked.
//!
//! A suite file has this shape:
//!
//! ```toml
//! description = "what the suite compares"
//! published = "same_architecture"   # optional: the CRD benchmark table to compare with
//! seeds = [0, 1, 2]                 # optional: a profile's seeds replace these
//!
//! [base]                            # settings shared by every run
//! method = "crcd"
//!
//! [axes]                            # each list varies on its own (cartesian product)
//! nce_k = [500, 4096, 16384]
//!
//! [[zip]]                           # lists that vary together, position by position
//! teacher = ["resnet32x4", "wrn_40_2"]
//! student = ["resnet8x4", "wrn_16_2"]
//! labels = ["r32x4-r8x4", "w402-w162"]   # optional row labels, one per position
//!
//! [[exclude]]                       # combinations to leave out
//! teacher = "wrn_40_2"
//! nce_k = 16384
//! ```
//!
//! Settings are the pair (`teacher`, `student`), `method`, and every field of
//! [`DistillConfig`] by its serde name. Parsing checks every key and the type of
//! every value, so a typo fails before any run starts. The error names the
//! file, the key and similar valid keys.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{
    DistillConfig, Element, Embed, GradientLoss, GradientPath, Method, RelationForm, Sampling,
    ScheduleKind,
};
use crate::models::Arch;

/// The type of a setting's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A zoo architecture name.
    Arch,
    /// A distillation method name.
    Method,
    /// A list of CRCD relation elements.
    Elements,
    /// One name out of a fixed list.
    Choice(&'static [&'static str]),
    Float,
    Int,
    Bool,
}

impl Kind {
    /// Describes the expected TOML value, for error messages.
    fn expected(self) -> String {
        match self {
            Kind::Arch => "a model name (string)".into(),
            Kind::Method => format!("a method name (one of {})", Method::NAMES.join(", ")),
            Kind::Elements => {
                format!("a list of relation elements (each one of {})", Element::NAMES.join(", "))
            }
            Kind::Choice(names) => format!("a string, one of {}", names.join(", ")),
            Kind::Float => "a number".into(),
            Kind::Int => "an integer".into(),
            Kind::Bool => "a boolean (true or false)".into(),
        }
    }
}

/// Every setting a suite may fix or vary, in the canonical order that decides
/// the nesting of the cartesian product (earlier keys vary slowest).
const SETTINGS: &[(&str, Kind)] = &[
    ("teacher", Kind::Arch),
    ("student", Kind::Arch),
    ("method", Kind::Method),
    ("elements", Kind::Elements),
    ("gradient_loss", Kind::Choice(GradientLoss::NAMES)),
    ("gradient_path", Kind::Choice(GradientPath::NAMES)),
    ("schedule", Kind::Choice(ScheduleKind::NAMES)),
    ("nce_k", Kind::Int),
    ("embed", Kind::Choice(Embed::NAMES)),
    ("sampling", Kind::Choice(Sampling::NAMES)),
    ("relation_form", Kind::Choice(RelationForm::NAMES)),
    ("grad_times_kd", Kind::Bool),
    ("teacher_train_mode", Kind::Bool),
    ("gamma", Kind::Float),
    ("alpha", Kind::Float),
    ("beta", Kind::Float),
    ("lambda_g", Kind::Float),
    ("kd_t", Kind::Float),
    ("schedule_step", Kind::Float),
    ("exp_alpha0", Kind::Float),
    ("exp_factor", Kind::Float),
    ("nce_t", Kind::Float),
    ("nce_mu", Kind::Float),
    ("feat_dim", Kind::Int),
];

/// A setting's name, ordered by its position in the canonical list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(usize);

impl Key {
    pub const TEACHER: Key = Key(0);
    pub const STUDENT: Key = Key(1);
    pub const METHOD: Key = Key(2);

    /// Looks a setting up by name.
    pub fn parse(name: &str) -> Option<Key> {
        SETTINGS.iter().position(|(n, _)| *n == name).map(Key)
    }

    /// Returns every setting name, in canonical order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        SETTINGS.iter().map(|(n, _)| *n)
    }

    pub fn name(self) -> &'static str {
        SETTINGS[self.0].0
    }

    pub fn kind(self) -> Kind {
        SETTINGS[self.0].1
    }

    /// Returns whether the key names a field of [`DistillConfig`] (all but the
    /// pair and the method).
    pub fn is_distill_field(self) -> bool {
        self.0 > Key::METHOD.0
    }

    /// Returns whether the key is one side of the teacher → student pair.
    pub fn is_pair(self) -> bool {
        self == Key::TEACHER || self == Key::STUDENT
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A checked setting value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Arch(Arch),
    Method(Method),
    Elements(Vec<Element>),
    /// A name already checked against the setting's list.
    Choice(&'static str),
    Float(f64),
    Int(i64),
    Bool(bool),
}

impl Value {
    /// Converts the value to the JSON that [`DistillConfig`]'s serde form uses.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Arch(a) => a.name().into(),
            Value::Method(m) => m.to_string().into(),
            Value::Elements(es) => es.iter().map(|e| e.to_string()).collect::<Vec<_>>().into(),
            Value::Choice(s) => (*s).into(),
            Value::Float(x) => (*x).into(),
            Value::Int(n) => (*n).into(),
            Value::Bool(b) => (*b).into(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Arch(a) => f.write_str(a.name()),
            Value::Method(m) => write!(f, "{m}"),
            Value::Elements(es) => {
                let names: Vec<String> = es.iter().map(|e| e.to_string()).collect();
                f.write_str(&names.join("+"))
            }
            Value::Choice(s) => f.write_str(s),
            Value::Float(x) => write!(f, "{x}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Settings by key, in canonical order.
pub type Settings = BTreeMap<Key, Value>;

/// The CRD benchmark table a suite reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishedTable {
    SameArchitecture,
    CrossArchitecture,
}

impl PublishedTable {
    /// Returns the `table` column value of the published CSV.
    pub fn name(self) -> &'static str {
        match self {
            PublishedTable::SameArchitecture => "same_architecture",
            PublishedTable::CrossArchitecture => "cross_architecture",
        }
    }
}

/// One position of a dimension: a value per key and an optional row label.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub values: Vec<Value>,
    pub label: Option<String>,
}

/// A list of settings that vary together: one `[axes]` key, or one `[[zip]]`
/// group.
#[derive(Clone, Debug, PartialEq)]
pub struct Dimension {
    pub keys: Vec<Key>,
    pub entries: Vec<Entry>,
}

/// A checked suite.
#[derive(Clone, Debug)]
pub struct Suite {
    /// The file stem, e.g. `negatives`.
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub published: Option<PublishedTable>,
    pub seeds: Option<Vec<u64>>,
    pub base: Settings,
    /// Dimensions of the cartesian product, ordered by their first key.
    pub dimensions: Vec<Dimension>,
    pub exclude: Vec<Settings>,
}

/// A suite file that cannot be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: cannot read: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}: invalid TOML: {message}", file.display())]
    Toml { file: PathBuf, message: String },
    #[error("{}: unknown {what} `{key}`\n{hint}", file.display())]
    UnknownKey { file: PathBuf, what: &'static str, key: String, hint: String },
    #[error("{}: `{key}`: expected {expected}, found {found}", file.display())]
    WrongType { file: PathBuf, key: String, expected: String, found: String },
    #[error("{}: `{key}`: {message}", file.display())]
    Invalid { file: PathBuf, key: String, message: String },
}

/// Top-level keys of a suite file.
const SUITE_KEYS: &[&str] =
    &["description", "published", "seeds", "base", "axes", "zip", "exclude"];

/// The raw suite: serde checks the top-level keys and their shapes; the
/// settings tables are checked key by key in [`Suite::from_raw`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AblationSpec {
    description: String,
    published: Option<PublishedTable>,
    seeds: Option<Vec<u64>>,
    #[serde(default)]
    base: toml::Table,
    #[serde(default)]
    axes: toml::Table,
    #[serde(default)]
    zip: Vec<toml::Table>,
    #[serde(default)]
    exclude: Vec<toml::Table>,
}

impl Suite {
    /// Reads and checks the suite file `path`; the suite's name is the file stem.
    pub fn load(path: &Path) -> Result<Suite, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SpecError::Read { file: path.to_owned(), source })?;
        Suite::parse(path, &text)
    }

    /// Parses suite text; `path` names the suite and appears in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Suite, SpecError> {
        let file = path.to_owned();
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| SpecError::Toml { file: file.clone(), message: one_line(&e) })?;
        for key in table.keys() {
            check_known(&file, "key", key, SUITE_KEYS.iter().copied())?;
        }
        let raw: AblationSpec =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| SpecError::Toml {
                file: file.clone(),
                message: one_line(&e),
            })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| SpecError::Invalid {
                file: file.clone(),
                key: "file name".into(),
                message: "a suite file needs a UTF-8 name".into(),
            })?
            .to_owned();
        Suite::from_raw(name, file, raw)
    }

    fn from_raw(name: String, file: PathBuf, raw: AblationSpec) -> Result<Suite, SpecError> {
        let invalid = |key: &str, message: String| SpecError::Invalid {
            file: file.clone(),
            key: key.to_owned(),
            message,
        };
        if let Some(seeds) = &raw.seeds {
            if seeds.is_empty() {
                return Err(invalid("seeds", "the list is empty: give at least one seed".into()));
            }
            if let Some(dup) = first_duplicate(seeds) {
                return Err(invalid("seeds", format!("seed {dup} is listed twice")));
            }
        }

        let mut base = Settings::new();
        for (name, value) in &raw.base {
            let key = parse_key(&file, "setting", name)?;
            base.insert(key, parse_value(&file, &format!("base.{name}"), key, value)?);
        }

        let mut dimensions = Vec::new();
        for (name, value) in &raw.axes {
            let key = parse_key(&file, "axis", name)?;
            let path = format!("axes.{name}");
            let values = parse_list(&file, &path, key, value)?;
            let entries = values.into_iter().map(|v| Entry { values: vec![v], label: None });
            dimensions.push(Dimension { keys: vec![key], entries: entries.collect() });
        }
        for (i, group) in raw.zip.iter().enumerate() {
            dimensions.push(parse_zip(&file, i, group)?);
        }

        let mut seen = BTreeMap::new();
        for (d, dim) in dimensions.iter().enumerate() {
            for key in &dim.keys {
                if base.contains_key(key) {
                    return Err(invalid(
                        key.name(),
                        "set in [base] and varied by an axis: remove it from one of them".into(),
                    ));
                }
                if seen.insert(*key, d).is_some() {
                    return Err(invalid(
                        key.name(),
                        "varied by two axes or zip groups: list it in one of them".into(),
                    ));
                }
            }
            check_distinct_entries(&file, dim)?;
        }
        dimensions.sort_by_key(|d| d.keys.iter().min().copied());

        let mut exclude = Vec::new();
        for (i, rule) in raw.exclude.iter().enumerate() {
            if rule.is_empty() {
                return Err(invalid(
                    &format!("exclude[{i}]"),
                    "an empty rule excludes every run".into(),
                ));
            }
            let mut settings = Settings::new();
            for (name, value) in rule {
                let key = parse_key(&file, "setting", name)?;
                let path = format!("exclude[{i}].{name}");
                if !seen.contains_key(&key) {
                    return Err(invalid(
                        &path,
                        "only settings that an axis or zip group varies can be excluded".into(),
                    ));
                }
                settings.insert(key, parse_value(&file, &path, key, value)?);
            }
            exclude.push(settings);
        }

        for required in [Key::TEACHER, Key::STUDENT, Key::METHOD] {
            if !base.contains_key(&required) && !seen.contains_key(&required) {
                return Err(invalid(
                    required.name(),
                    format!("missing: set `{required}` in [base] or vary it in [axes] or [[zip]]"),
                ));
            }
        }

        Ok(Suite {
            name,
            file,
            description: raw.description,
            published: raw.published,
            seeds: raw.seeds,
            base,
            dimensions,
            exclude,
        })
    }

    /// Returns the names of the varied settings, a zip group joined by `+`.
    pub fn axis_names(&self) -> Vec<String> {
        self.dimensions
            .iter()
            .map(|d| d.keys.iter().map(|k| k.name()).collect::<Vec<_>>().join("+"))
            .collect()
    }
}

fn parse_zip(file: &Path, index: usize, group: &toml::Table) -> Result<Dimension, SpecError> {
    let mut keys = Vec::new();
    let mut columns = Vec::new();
    let mut labels = None;
    for (name, value) in group {
        let path = format!("zip[{index}].{name}");
        if name == "labels" {
            labels = Some(parse_labels(file, &path, value)?);
            continue;
        }
        let key = Key::parse(name)
            .ok_or_else(|| unknown_key(file, "setting", name, Key::names().chain(["labels"])))?;
        keys.push(key);
        columns.push(parse_list(file, &path, key, value)?);
    }

    let invalid = |message: String| SpecError::Invalid {
        file: file.to_owned(),
        key: format!("zip[{index}]"),
        message,
    };
    if keys.is_empty() {
        return Err(invalid("a zip group needs at least one setting list".into()));
    }
    // Keys in canonical order, so that equal groups expand the same way
    // however the file orders them.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| keys[i]);
    let first = order[0];
    let len = columns[first].len();
    for &i in &order {
        if columns[i].len() != len {
            return Err(invalid(format!(
                "lists of a zip group must have equal lengths: {} has {len}, {} has {}",
                keys[first],
                keys[i],
                columns[i].len()
            )));
        }
    }
    if let Some(labels) = &labels {
        if labels.len() != len {
            return Err(invalid(format!(
                "`labels` has {} entries but the lists have {len}",
                labels.len()
            )));
        }
    }

    let entries = (0..len)
        .map(|j| Entry {
            values: order.iter().map(|&i| columns[i][j].clone()).collect(),
            label: labels.as_ref().map(|l| l[j].clone()),
        })
        .collect();
    Ok(Dimension { keys: order.iter().map(|&i| keys[i]).collect(), entries })
}

fn parse_labels(file: &Path, path: &str, value: &toml::Value) -> Result<Vec<String>, SpecError> {
    let list =
        value.as_array().ok_or_else(|| wrong_type(file, path, "a list of strings", value))?;
    let mut labels = Vec::new();
    for (j, item) in list.iter().enumerate() {
        let text = item
            .as_str()
            .ok_or_else(|| wrong_type(file, &format!("{path}[{j}]"), "a string", item))?;
        labels.push(text.to_owned());
    }
    Ok(labels)
}

fn check_distinct_entries(file: &Path, dim: &Dimension) -> Result<(), SpecError> {
    for (i, a) in dim.entries.iter().enumerate() {
        if let Some(b) = dim.entries[..i].iter().find(|b| b.values == a.values) {
            let values: Vec<String> = b.values.iter().map(|v| v.to_string()).collect();
            return Err(SpecError::Invalid {
                file: file.to_owned(),
                key: dim.keys.iter().map(|k| k.name()).collect::<Vec<_>>().join("+"),
                message: format!("value {} is listed twice", values.join(", ")),
            });
        }
        if let (Some(label), true) = (&a.label, i > 0) {
            if dim.entries[..i].iter().any(|b| b.label.as_ref() == Some(label)) {
                return Err(SpecError::Invalid {
                    file: file.to_owned(),
                    key: "labels".into(),
                    message: format!("label `{label}` is used twice"),
                });
            }
        }
    }
    Ok(())
}

fn parse_key(file: &Path, what: &'static str, name: &str) -> Result<Key, SpecError> {
    Key::parse(name).ok_or_else(|| unknown_key(file, what, name, Key::names()))
}

fn parse_list(
    file: &Path,
    path: &str,
    key: Key,
    value: &toml::Value,
) -> Result<Vec<Value>, SpecError> {
    let list = value.as_array().ok_or_else(|| {
        wrong_type(file, path, &format!("a list of values, each {}", key.kind().expected()), value)
    })?;
    if list.is_empty() {
        return Err(SpecError::Invalid {
            file: file.to_owned(),
            key: path.to_owned(),
            message: "the list is empty: give at least one value".into(),
        });
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| parse_value(file, &format!("{path}[{i}]"), key, item))
        .collect()
}

/// Checks one TOML value against the type of `key`.
pub(crate) fn parse_value(
    file: &Path,
    path: &str,
    key: Key,
    value: &toml::Value,
) -> Result<Value, SpecError> {
    let kind = key.kind();
    let mismatch = || wrong_type(file, path, &kind.expected(), value);
    let unknown_name = |what: &str, name: &str, names: &[&str]| SpecError::Invalid {
        file: file.to_owned(),
        key: path.to_owned(),
        message: format!("unknown {what} '{name}'\n{}", hint("names", name, names.iter().copied())),
    };
    match kind {
        Kind::Arch => {
            let name = value.as_str().ok_or_else(mismatch)?;
            name.parse::<Arch>()
                .map(Value::Arch)
                .map_err(|_| unknown_name("model", name, &Arch::ALL.map(Arch::name)))
        }
        Kind::Method => {
            let name = value.as_str().ok_or_else(mismatch)?;
            name.parse::<Method>()
                .map(Value::Method)
                .map_err(|_| unknown_name("method", name, Method::NAMES))
        }
        Kind::Choice(names) => {
            let name = value.as_str().ok_or_else(mismatch)?;
            names
                .iter()
                .find(|n| **n == name)
                .map(|n| Value::Choice(n))
                .ok_or_else(|| unknown_name(key.name(), name, names))
        }
        Kind::Elements => {
            let list = value.as_array().ok_or_else(mismatch)?;
            let mut elements = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                let name =
                    item.as_str().ok_or_else(|| wrong_type(file, &item_path, "a string", item))?;
                let element = name.parse::<Element>().map_err(|_| SpecError::Invalid {
                    file: file.to_owned(),
                    key: item_path.clone(),
                    message: format!(
                        "unknown relation element '{name}': expected one of {}",
                        Element::NAMES.join(", ")
                    ),
                })?;
                if elements.contains(&element) {
                    return Err(SpecError::Invalid {
                        file: file.to_owned(),
                        key: item_path,
                        message: format!("element {name} is listed twice"),
                    });
                }
                elements.push(element);
            }
            Ok(Value::Elements(elements))
        }
        Kind::Float => match value {
            toml::Value::Float(x) => Ok(Value::Float(*x)),
            toml::Value::Integer(n) => Ok(Value::Float(*n as f64)),
            _ => Err(mismatch()),
        },
        Kind::Int => value.as_integer().map(Value::Int).ok_or_else(mismatch),
        Kind::Bool => value.as_bool().map(Value::Bool).ok_or_else(mismatch),
    }
}

/// Applies `settings`' distillation fields to `config` through its serde form,
/// so that the field names stay those of [`DistillConfig`].
pub fn apply_distill_settings(
    config: &DistillConfig,
    settings: &Settings,
) -> Result<DistillConfig, serde_json::Error> {
    let mut json = serde_json::to_value(config)?;
    let fields = json.as_object_mut().expect("a DistillConfig serialises to a JSON object");
    for (key, value) in settings.iter().filter(|(k, _)| k.is_distill_field()) {
        fields.insert(key.name().to_owned(), value.to_json());
    }
    serde_json::from_value(json)
}

fn wrong_type(file: &Path, path: &str, expected: &str, found: &toml::Value) -> SpecError {
    let found_text = match found {
        toml::Value::String(s) => format!("string \"{s}\""),
        toml::Value::Table(_) | toml::Value::Array(_) => found.type_str().to_owned(),
        other => format!("{} {other}", other.type_str()),
    };
    SpecError::WrongType {
        file: file.to_owned(),
        key: path.to_owned(),
        expected: expected.to_owned(),
        found: found_text,
    }
}

fn check_known<'a>(
    file: &Path,
    what: &'static str,
    key: &str,
    valid: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), SpecError> {
    if valid.clone().any(|v| v == key) {
        Ok(())
    } else {
        Err(unknown_key(file, what, key, valid))
    }
}

pub(crate) fn unknown_key<'a>(
    file: &Path,
    what: &'static str,
    key: &str,
    valid: impl Iterator<Item = &'a str>,
) -> SpecError {
    SpecError::UnknownKey {
        file: file.to_owned(),
        what,
        key: key.to_owned(),
        hint: hint("keys", key, valid),
    }
}

/// Builds the hint line of an unknown-name error: the similar names, or all
/// valid names when none is close.
pub(crate) fn hint<'a>(noun: &str, word: &str, valid: impl Iterator<Item = &'a str>) -> String {
    let valid: Vec<&str> = valid.collect();
    let close = similar(word, &valid);
    if close.is_empty() {
        format!("valid {noun}: {}", valid.join(", "))
    } else {
        format!("similar {noun}: {}", close.join(", "))
    }
}

/// Returns up to three names of `candidates` within a small edit distance of
/// `word`, or containing it, nearest first.
pub(crate) fn similar<'a>(word: &str, candidates: &[&'a str]) -> Vec<&'a str> {
    let lower = word.to_lowercase();
    let limit = (lower.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .iter()
        .filter_map(|c| {
            let c_lower = c.to_lowercase();
            let d = edit_distance(&lower, &c_lower);
            let contains =
                lower.len() >= 3 && (c_lower.contains(&lower) || lower.contains(&c_lower));
            (d <= limit || contains).then_some((d, *c))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn first_duplicate<T: PartialEq + Copy>(items: &[T]) -> Option<T> {
    items.iter().enumerate().find(|(i, x)| items[..*i].contains(x)).map(|(_, x)| *x)
}

/// Joins a multi-line parser message into one line.
pub(crate) fn one_line(err: &dyn fmt::Display) -> String {
    err.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("nce_k", "nce_k"), 0);
        assert_eq!(edit_distance("nce_kk", "nce_k"), 1);
        assert_eq!(edit_distance("ncek", "nce_k"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn similar_names_nearest_first() {
        let names = ["nce_k", "nce_t", "nce_mu", "embed"];
        assert_eq!(similar("nce_kk", &names), vec!["nce_k", "nce_mu", "nce_t"]);
        assert!(similar("zzzzzzzz", &names).is_empty());
    }

    #[test]
    fn distill_keys_match_config_fields() {
        let json = serde_json::to_value(DistillConfig::for_method(Method::Crcd)).unwrap();
        let mut fields: Vec<&str> = json.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        fields.retain(|f| *f != "method");
        fields.sort();
        let mut keys: Vec<&str> = SETTINGS
            .iter()
            .enumerate()
            .filter(|(i, _)| Key(*i).is_distill_field())
            .map(|(_, (n, _))| *n)
            .collect();
        keys.sort();
        assert_eq!(keys, fields);
    }
}
