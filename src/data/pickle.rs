//! A reader for the subset of Python's pickle format that CIFAR batches use.
//!
//! It runs the pickle virtual machine for the binary opcodes of protocols 2
//! to 5, the ones that Python 2's `cPickle.dump(.., 2)` (the official CIFAR
//! python files) and Python 3's `pickle.dump` write for dicts of lists,
//! strings and numpy arrays. No Python code runs: the few callables these
//! files name are interpreted here.
//!
//! - `numpy.core.multiarray._reconstruct` followed by BUILD (protocols 2 to 4)
//!   and `numpy.core.numeric._frombuffer` (protocol 5) make an [`NdArray`].
//!   The `numpy._core` spellings of numpy 2 are accepted too.
//! - `numpy.dtype` followed by BUILD makes a [`Dtype`].
//! - `_codecs.encode(text, "latin1")`, which Python 3 writes for `bytes` under
//!   protocol 2, makes [`Value::Bytes`].
//! - Any other callable gives a [`Value::Object`] that only records its name,
//!   so a field of an unknown type fails only if the caller needs it.
//!
//! Python 2 `str` values (opcodes BINSTRING and SHORT_BINSTRING) become
//! [`Value::Bytes`], as `pickle.load(f, encoding="bytes")` does, so the keys of
//! the official files are `b"data"` and not `"data"`; [`Value::get`] accepts
//! either.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// A Python object rebuilt from a pickle.
///
/// Lists, dicts, arrays and dtypes are shared (`Rc<RefCell<..>>`), as in
/// Python: APPENDS or BUILD after a memo PUT changes every reference.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    /// Key-value pairs in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A module attribute named by GLOBAL or STACK_GLOBAL, not yet called.
    Global {
        module: Rc<str>,
        name: Rc<str>,
    },
    Array(Rc<RefCell<NdArray>>),
    Dtype(Rc<RefCell<Dtype>>),
    /// The result of calling a callable this reader does not interpret, with
    /// the callable's `module.name`.
    Object(Rc<str>),
}

/// A numpy array: its element type, shape and raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// True when `data` is in column-major (Fortran) order.
    pub fortran_order: bool,
    pub data: Vec<u8>,
}

/// A numpy dtype, as its type string and byte order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dtype {
    /// Kind letter and item size, as numpy's `dtype.str` without the byte
    /// order: `u1`, `i8`, `f4`, `b1`; `O8` for Python objects.
    pub descr: String,
    /// `<` little-endian, `>` big-endian, `|` not applicable, `=` native.
    pub byte_order: char,
}

impl Dtype {
    fn from_descr(descr: &str) -> Dtype {
        match descr.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => {
                Dtype { descr: descr[1..].to_owned(), byte_order: c }
            }
            _ => Dtype { descr: descr.to_owned(), byte_order: '=' },
        }
    }

    /// Item size in bytes, or `None` for object and other unsized types.
    pub fn item_size(&self) -> Option<usize> {
        let mut chars = self.descr.chars();
        match chars.next()? {
            'b' | 'i' | 'u' | 'f' | 'c' => chars.as_str().parse().ok(),
            '?' => Some(1),
            _ => None,
        }
    }

    /// Returns whether the bytes of one item are little-endian: true for
    /// one-byte types and for native order, which is little-endian on the
    /// x86-64 and aarch64 platforms that libtorch ships for.
    fn is_little_endian(&self) -> bool {
        self.byte_order != '>'
    }
}

impl NdArray {
    /// Returns the elements as `i64` in C (row-major) order, for signed,
    /// unsigned and boolean integer dtypes of 1, 2, 4 or 8 bytes.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let size = self.dtype.item_size()?;
        let signed = self.dtype.descr.starts_with('i');
        let integer = matches!(self.dtype.descr.chars().next(), Some('i' | 'u' | 'b' | '?'));
        if !integer || ![1, 2, 4, 8].contains(&size) {
            return None;
        }
        let values = self
            .data
            .chunks_exact(size)
            .map(|item| int_from_bytes(item, signed, self.dtype.is_little_endian()))
            .collect::<Vec<_>>();
        Some(if self.fortran_order { fortran_to_c(&values, &self.shape) } else { values })
    }

    /// Returns the raw bytes in C order (a copy, reordered when the array is
    /// in Fortran order).
    pub fn c_order_bytes(&self) -> Option<Vec<u8>> {
        if !self.fortran_order || self.shape.len() < 2 {
            return Some(self.data.clone());
        }
        let size = self.dtype.item_size()?;
        let items: Vec<&[u8]> = self.data.chunks_exact(size).collect();
        Some(fortran_to_c(&items, &self.shape).concat())
    }
}

/// Reads one integer of `bytes.len()` (at most 8) bytes.
fn int_from_bytes(bytes: &[u8], signed: bool, little_endian: bool) -> i64 {
    let mut buf = [0u8; 8];
    let n = bytes.len();
    if little_endian {
        buf[..n].copy_from_slice(bytes);
    } else {
        for (i, b) in bytes.iter().rev().enumerate() {
            buf[i] = *b;
        }
    }
    if signed && buf[n - 1] & 0x80 != 0 {
        buf[n..].fill(0xff);
    }
    i64::from_le_bytes(buf)
}

/// Reorders the items of an array of `shape` from column-major to row-major.
fn fortran_to_c<T: Clone>(items: &[T], shape: &[usize]) -> Vec<T> {
    let total = items.len();
    let mut out = Vec::with_capacity(total);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..total {
        // The column-major offset of the current row-major index.
        let mut offset = 0;
        let mut stride = 1;
        for (i, &dim) in index.iter().zip(shape) {
            offset += i * stride;
            stride *= dim;
        }
        out.push(items[offset].clone());
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

impl Value {
    /// Python's name for the type of this value, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global { module, name } => format!("reference to {module}.{name}"),
            Value::Array(a) => {
                let a = a.borrow();
                format!("numpy array of dtype {} and shape {:?}", a.dtype.descr, a.shape)
            }
            Value::Dtype(_) => "numpy dtype".into(),
            Value::Object(class) => format!("{class} object"),
        }
    }

    /// Looks up `key` in a dict, matching a `str` or a `bytes` key with
    /// the same UTF-8 text. Returns `None` for a missing key or a non-dict.
    pub fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(pairs) = self else { return None };
        let pairs = pairs.borrow();
        pairs.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v.clone())
    }

    /// Returns the keys of a dict that are text (`str` or UTF-8 `bytes`), in
    /// order.
    pub fn text_keys(&self) -> Vec<String> {
        let Value::Dict(pairs) = self else { return Vec::new() };
        let pairs = pairs.borrow();
        pairs.iter().filter_map(|(k, _)| k.as_text().map(str::to_owned)).collect()
    }

    fn as_text(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Error from parsing a pickle.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("the data ends at byte {len} inside opcode 0x{opcode:02x} at byte {offset}; the file is truncated")]
    Truncated { opcode: u8, offset: usize, len: usize },
    #[error("the data ends at byte {len} without a STOP opcode; the file is truncated")]
    NoStop { len: usize },
    #[error("unsupported opcode 0x{opcode:02x} ({}) at byte {offset}; this reader handles the binary opcodes of pickle protocols 2 to 5", printable(*.opcode))]
    UnsupportedOpcode { opcode: u8, offset: usize },
    #[error("pickle protocol {0} is not supported; this reader handles protocols 2 to 5")]
    UnsupportedProtocol(u8),
    #[error("out-of-band buffer at byte {offset}; pickle the data without a buffer_callback")]
    OutOfBandBuffer { offset: usize },
    #[error("invalid pickle at byte {offset}: {message}")]
    Invalid { offset: usize, message: String },
}

fn printable(opcode: u8) -> String {
    if opcode.is_ascii_graphic() {
        format!("'{}'", opcode as char)
    } else {
        "not a printable character".into()
    }
}

/// Parses a pickle and returns the object it stores.
pub fn parse(bytes: &[u8]) -> Result<Value, PickleError> {
    Machine::new(bytes).run()
}

/// The pickle virtual machine: a stack, a stack of marks and a memo.
struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Start of the opcode being run, for error messages.
    offset: usize,
    opcode: u8,
    stack: Vec<Value>,
    /// The stacks saved by MARK; the items above the last mark are `stack`.
    marks: Vec<Vec<Value>>,
    memo: HashMap<u32, Value>,
    /// Lists, tuples, dicts and sets built so far.
    containers: usize,
}

/// Maximum number of containers a pickle may build. A CIFAR batch builds
/// fewer than ten. The cap keeps a crafted file of deeply nested lists from
/// overflowing the stack when the nested values are dropped.
const MAX_CONTAINERS: usize = 1_000;

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Machine<'a> {
        Machine {
            bytes,
            pos: 0,
            offset: 0,
            opcode: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            containers: 0,
        }
    }

    fn invalid(&self, message: impl Into<String>) -> PickleError {
        PickleError::Invalid { offset: self.offset, message: message.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or(
            PickleError::Truncated {
                opcode: self.opcode,
                offset: self.offset,
                len: self.bytes.len(),
            },
        )?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn take_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn take_u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn take_u64_len(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.take_array()?);
        usize::try_from(n).map_err(|_| self.invalid(format!("length {n} does not fit in memory")))
    }

    /// Reads a newline-terminated line (GLOBAL's arguments).
    fn take_line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.bytes[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PickleError::Truncated {
                opcode: self.opcode,
                offset: self.offset,
                len: self.bytes.len(),
            });
        };
        let line = self.take(n + 1)?;
        std::str::from_utf8(&line[..n]).map_err(|_| self.invalid("GLOBAL name is not UTF-8"))
    }

    fn take_text(&mut self, n: usize) -> Result<Value, PickleError> {
        let raw = self.take(n)?;
        let text = std::str::from_utf8(raw).map_err(|_| self.invalid("string is not UTF-8"))?;
        Ok(Value::Str(text.into()))
    }

    fn take_bytes(&mut self, n: usize) -> Result<Value, PickleError> {
        Ok(Value::Bytes(Rc::new(self.take(n)?.to_vec())))
    }

    fn push(&mut self, value: Value) {
        self.stack.push(value);
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| self.invalid("stack underflow"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        self.stack.last().ok_or_else(|| self.invalid("stack underflow"))
    }

    /// Returns the items pushed since the last MARK and restores the stack
    /// that MARK saved.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let saved = self.marks.pop().ok_or_else(|| self.invalid("no MARK on the stack"))?;
        Ok(std::mem::replace(&mut self.stack, saved))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let value = self.top()?.clone();
        self.memo.insert(key, value);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let value = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.invalid(format!("memo key {key} was never stored")))?;
        self.push(value);
        Ok(())
    }

    fn run(mut self) -> Result<Value, PickleError> {
        while self.pos < self.bytes.len() {
            self.offset = self.pos;
            self.opcode = self.take_u8()?;
            if self.opcode == b'.' {
                return self.pop();
            }
            if matches!(
                self.opcode,
                b')' | b't' | 0x85..=0x87 | b']' | b'l' | b'}' | b'd' | 0x8f | 0x91
            ) {
                self.containers += 1;
                if self.containers > MAX_CONTAINERS {
                    let message = format!(
                        "more than {MAX_CONTAINERS} lists, tuples, dicts and sets; a CIFAR batch has a few"
                    );
                    return Err(self.invalid(&message));
                }
            }
            self.step()?;
        }
        Err(PickleError::NoStop { len: self.bytes.len() })
    }

    /// Runs the opcode in `self.opcode`, whose byte has been consumed.
    fn step(&mut self) -> Result<(), PickleError> {
        match self.opcode {
            // PROTO
            0x80 => {
                let protocol = self.take_u8()?;
                if !(2..=5).contains(&protocol) {
                    return Err(PickleError::UnsupportedProtocol(protocol));
                }
            }
            // FRAME: a length prefix for buffered reading, with no effect on the objects.
            0x95 => {
                self.take(8)?;
            }
            b'(' => self.marks.push(std::mem::take(&mut self.stack)),
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            // BININT1, BININT2, BININT
            b'K' => {
                let v = self.take_u8()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take_array()?);
                self.push(Value::Int(v.into()));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take_array()?);
                self.push(Value::Int(v.into()));
            }
            // LONG1, LONG4: little-endian two's complement of n bytes.
            0x8a => {
                let n = self.take_u8()? as usize;
                self.push_long(n)?;
            }
            0x8b => {
                let n = self.take_u32()? as usize;
                self.push_long(n)?;
            }
            // BINFLOAT: big-endian IEEE 754 double.
            b'G' => {
                let v = f64::from_be_bytes(self.take_array()?);
                self.push(Value::Float(v));
            }
            // BINSTRING, SHORT_BINSTRING: Python 2 str, read as bytes.
            b'T' => {
                let n = i32::from_le_bytes(self.take_array()?);
                let n = usize::try_from(n).map_err(|_| self.invalid("negative string length"))?;
                let v = self.take_bytes(n)?;
                self.push(v);
            }
            b'U' => {
                let n = self.take_u8()? as usize;
                let v = self.take_bytes(n)?;
                self.push(v);
            }
            // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
            b'B' => {
                let n = self.take_u32()? as usize;
                let v = self.take_bytes(n)?;
                self.push(v);
            }
            b'C' => {
                let n = self.take_u8()? as usize;
                let v = self.take_bytes(n)?;
                self.push(v);
            }
            0x8e | 0x96 => {
                let n = self.take_u64_len()?;
                let v = self.take_bytes(n)?;
                self.push(v);
            }
            // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
            b'X' => {
                let n = self.take_u32()? as usize;
                let v = self.take_text(n)?;
                self.push(v);
            }
            0x8c => {
                let n = self.take_u8()? as usize;
                let v = self.take_text(n)?;
                self.push(v);
            }
            0x8d => {
                let n = self.take_u64_len()?;
                let v = self.take_text(n)?;
                self.push(v);
            }
            b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(Rc::new(items)));
            }
            // TUPLE1, TUPLE2, TUPLE3
            0x85..=0x87 => {
                let n = (self.opcode - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(self.invalid("stack underflow"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(Rc::new(items)));
            }
            b']' => self.push(Value::List(Rc::default())),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'}' => self.push(Value::Dict(Rc::default())),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push(Value::Dict(Rc::new(RefCell::new(pairs))));
            }
            // EMPTY_SET and FROZENSET; a set is kept as a list of its items.
            0x8f => self.push(Value::List(Rc::default())),
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(Rc::new(items)));
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item])?;
            }
            // APPENDS and ADDITEMS
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.extend_dict(vec![(key, value)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.extend_dict(pairs)?;
            }
            // BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET
            b'q' => {
                let key = self.take_u8()?.into();
                self.memo_put(key)?;
            }
            b'r' => {
                let key = self.take_u32()?;
                self.memo_put(key)?;
            }
            0x94 => {
                let key = u32::try_from(self.memo.len())
                    .map_err(|_| self.invalid("more than 2^32 memo entries"))?;
                self.memo_put(key)?;
            }
            b'h' => {
                let key = self.take_u8()?.into();
                self.memo_get(key)?;
            }
            b'j' => {
                let key = self.take_u32()?;
                self.memo_get(key)?;
            }
            b'c' => {
                let module = self.take_line()?;
                let name = self.take_line()?;
                self.push(Value::Global { module: module.into(), name: name.into() });
            }
            // STACK_GLOBAL
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err(self.invalid("STACK_GLOBAL needs two str values"));
                };
                self.push(Value::Global { module, name });
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let value = self.call(&callable, &args)?;
                self.push(value);
            }
            // NEWOBJ and NEWOBJ_EX: cls.__new__(cls, *args), kept as an opaque object.
            0x81 | 0x92 => {
                if self.opcode == 0x92 {
                    self.pop()?;
                }
                self.pop()?;
                let class = self.pop()?;
                let name = match class {
                    Value::Global { module, name } => format!("{module}.{name}"),
                    other => other.type_name(),
                };
                self.push(Value::Object(name.into()));
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?.clone();
                self.build(&target, &state)?;
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?.clone();
                self.push(top);
            }
            // NEXT_BUFFER, READONLY_BUFFER
            0x97 | 0x98 => return Err(PickleError::OutOfBandBuffer { offset: self.offset }),
            opcode => return Err(PickleError::UnsupportedOpcode { opcode, offset: self.offset }),
        }
        Ok(())
    }

    fn push_long(&mut self, n: usize) -> Result<(), PickleError> {
        let raw = self.take(n)?;
        let value = match n {
            0 => 0,
            1..=8 => int_from_bytes(raw, true, true),
            _ => return Err(self.invalid(format!("integer of {n} bytes does not fit in 64 bits"))),
        };
        self.push(Value::Int(value));
        Ok(())
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.invalid("odd number of items for dict keys and values"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top()? {
            Value::List(list) => {
                list.borrow_mut().extend(items);
                Ok(())
            }
            other => Err(self.invalid(format!("cannot append to a {}", other.type_name()))),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<(), PickleError> {
        match self.top()? {
            Value::Dict(dict) => {
                let mut dict = dict.borrow_mut();
                for (key, value) in pairs {
                    match dict.iter_mut().find(|(k, _)| same_key(k, &key)) {
                        Some(slot) => slot.1 = value,
                        None => dict.push((key, value)),
                    }
                }
                Ok(())
            }
            other => Err(self.invalid(format!("cannot set an item of a {}", other.type_name()))),
        }
    }

    /// Runs REDUCE: `callable(*args)` for the callables listed in the module
    /// documentation, an opaque [`Value::Object`] for any other.
    fn call(&self, callable: &Value, args: &Value) -> Result<Value, PickleError> {
        let Value::Global { module, name } = callable else {
            return Err(self.invalid(format!("REDUCE on a {}", callable.type_name())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.invalid(format!("REDUCE arguments are a {}", args.type_name())));
        };
        let numpy_core = |m: &str, sub: &str| {
            m.strip_prefix("numpy.core.").or_else(|| m.strip_prefix("numpy._core.")) == Some(sub)
        };
        let callable_name = format!("{module}.{name}");
        match (&**module, &**name) {
            (m, "_reconstruct") if numpy_core(m, "multiarray") => {
                // Arguments (ndarray, (0,), b"b"): an empty array that BUILD fills.
                Ok(Value::Array(Rc::new(RefCell::new(NdArray {
                    dtype: Dtype::from_descr("u1"),
                    shape: vec![0],
                    fortran_order: false,
                    data: Vec::new(),
                }))))
            }
            (m, "_frombuffer") if numpy_core(m, "numeric") => {
                let [buffer, dtype, shape, order] = &args[..] else {
                    return Err(self.invalid(format!("{callable_name} needs 4 arguments")));
                };
                let array = NdArray {
                    dtype: self.dtype_of(dtype, &callable_name)?,
                    shape: self.shape_of(shape, &callable_name)?,
                    fortran_order: matches!(order.as_text(), Some("F")),
                    data: self.bytes_of(buffer, &callable_name)?,
                };
                self.check_array(&array)?;
                Ok(Value::Array(Rc::new(RefCell::new(array))))
            }
            ("numpy", "dtype") => match args.first().and_then(Value::as_text) {
                Some(descr) => Ok(Value::Dtype(Rc::new(RefCell::new(Dtype::from_descr(descr))))),
                None => Err(self.invalid(format!("{callable_name} needs a type string"))),
            },
            (m, "scalar") if numpy_core(m, "multiarray") => {
                let [dtype, Value::Bytes(raw)] = &args[..] else {
                    return Ok(Value::Object(callable_name.into()));
                };
                let array = NdArray {
                    dtype: self.dtype_of(dtype, &callable_name)?,
                    shape: Vec::new(),
                    fortran_order: false,
                    data: raw.to_vec(),
                };
                Ok(match array.to_i64_vec().as_deref() {
                    Some([v]) => Value::Int(*v),
                    _ => Value::Object(callable_name.into()),
                })
            }
            ("_codecs", "encode") => {
                let [Value::Str(text), Value::Str(encoding)] = &args[..] else {
                    return Err(self.invalid(format!("{callable_name} needs (str, encoding)")));
                };
                if !matches!(&**encoding, "latin1" | "latin-1" | "iso-8859-1") {
                    return Err(self.invalid(format!(
                        "{callable_name} with encoding {encoding} is not supported"
                    )));
                }
                let bytes = text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| self.invalid("latin-1 text contains a character above U+00FF"))?;
                Ok(Value::Bytes(Rc::new(bytes)))
            }
            ("builtins" | "__builtin__", "bytes" | "bytearray") => match &args[..] {
                [] => Ok(Value::Bytes(Rc::default())),
                [Value::Bytes(b)] => Ok(Value::Bytes(b.clone())),
                _ => Ok(Value::Object(callable_name.into())),
            },
            _ => Ok(Value::Object(callable_name.into())),
        }
    }

    /// Runs BUILD: sets the state of an array or a dtype, ignores the state
    /// of an opaque object.
    fn build(&self, target: &Value, state: &Value) -> Result<(), PickleError> {
        match target {
            Value::Array(array) => {
                let Value::Tuple(items) = state else {
                    return Err(self.invalid(format!("array state is a {}", state.type_name())));
                };
                // numpy writes (version, shape, dtype, is_fortran, data); very
                // old pickles omit the version.
                let items = match &items[..] {
                    [_, rest @ ..] if rest.len() == 4 => rest,
                    all if all.len() == 4 => all,
                    _ => return Err(self.invalid("array state is not a 4- or 5-tuple")),
                };
                let context = "array state";
                let built = NdArray {
                    shape: self.shape_of(&items[0], context)?,
                    dtype: self.dtype_of(&items[1], context)?,
                    fortran_order: matches!(items[2], Value::Bool(true) | Value::Int(1)),
                    data: match &items[3] {
                        Value::List(_) => {
                            return Err(self.invalid("arrays of Python objects are not supported"))
                        }
                        other => self.bytes_of(other, context)?,
                    },
                };
                self.check_array(&built)?;
                *array.borrow_mut() = built;
                Ok(())
            }
            Value::Dtype(dtype) => {
                // numpy writes (version, byte_order, subdtype, names, fields,
                // elsize, alignment, flags); only the byte order is needed.
                if let Value::Tuple(items) = state {
                    if let Some(order) = items.get(1).and_then(Value::as_text) {
                        if let Some(c) = order.chars().next() {
                            dtype.borrow_mut().byte_order = c;
                        }
                    }
                }
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(self.invalid(format!("BUILD on a {}", other.type_name()))),
        }
    }

    fn dtype_of(&self, value: &Value, context: &str) -> Result<Dtype, PickleError> {
        match value {
            Value::Dtype(d) => Ok(d.borrow().clone()),
            other => Err(self.invalid(format!(
                "{context}: expected a numpy dtype, found a {}",
                other.type_name()
            ))),
        }
    }

    fn shape_of(&self, value: &Value, context: &str) -> Result<Vec<usize>, PickleError> {
        let Value::Tuple(dims) = value else {
            return Err(self.invalid(format!("{context}: shape is a {}", value.type_name())));
        };
        dims.iter()
            .map(|d| match d {
                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                _ => {
                    Err(self.invalid(format!("{context}: shape {dims:?} is not a tuple of sizes")))
                }
            })
            .collect()
    }

    fn bytes_of(&self, value: &Value, context: &str) -> Result<Vec<u8>, PickleError> {
        match value {
            Value::Bytes(b) => Ok(b.to_vec()),
            other => Err(self.invalid(format!("{context}: data is a {}", other.type_name()))),
        }
    }

    fn check_array(&self, array: &NdArray) -> Result<(), PickleError> {
        let Some(item_size) = array.dtype.item_size() else { return Ok(()) };
        let expected = array.shape.iter().try_fold(item_size, |acc, &d| acc.checked_mul(d));
        if expected != Some(array.data.len()) {
            return Err(self.invalid(format!(
                "array of dtype {} and shape {:?} has {} data bytes, expected {}",
                array.dtype.descr,
                array.shape,
                array.data.len(),
                expected.map_or("more than fits in memory".to_owned(), |n| n.to_string()),
            )));
        }
        Ok(())
    }
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bytes(x), Value::Bytes(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => false,
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.byte_order, self.descr)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn too_many_containers_is_an_error() {
        // PROTO 2, then 1,001 nested lists: EMPTY_LIST each, then APPENDs.
        let mut bytes = vec![0x80, 2];
        bytes.extend(std::iter::repeat_n(b']', MAX_CONTAINERS + 1));
        bytes.extend(std::iter::repeat_n(b'a', MAX_CONTAINERS));
        bytes.push(b'.');
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("more than 1000 lists"), "{err}");
    }

    use super::*;

    /// Pickles of one dict written by Python 3.11.7 and numpy 2.4.6; see
    /// `tests/fixtures/data/make_pickles.py` for the dict.
    const NUMPY_PICKLES: [(u8, &[u8]); 4] = [
        (2, include_bytes!("../../tests/fixtures/data/numpy_protocol2.pkl")),
        (3, include_bytes!("../../tests/fixtures/data/numpy_protocol3.pkl")),
        (4, include_bytes!("../../tests/fixtures/data/numpy_protocol4.pkl")),
        (5, include_bytes!("../../tests/fixtures/data/numpy_protocol5.pkl")),
    ];

    fn array(value: Option<Value>) -> NdArray {
        match value {
            Some(Value::Array(a)) => a.borrow().clone(),
            other => panic!("expected an array, got {other:?}"),
        }
    }

    fn int_list(value: Option<Value>) -> Vec<i64> {
        match value {
            Some(Value::List(items)) => items
                .borrow()
                .iter()
                .map(|v| match v {
                    Value::Int(i) => *i,
                    other => panic!("expected an int, got {other:?}"),
                })
                .collect(),
            other => panic!("expected a list, got {other:?}"),
        }
    }

    #[test]
    fn numpy_pickles_all_protocols() {
        for (protocol, bytes) in NUMPY_PICKLES {
            let root = parse(bytes).unwrap_or_else(|e| panic!("protocol {protocol}: {e}"));

            let data = array(root.get("data"));
            assert_eq!(data.dtype.descr, "u1", "protocol {protocol}");
            assert_eq!(data.shape, [3, 100], "protocol {protocol}");
            let expected: Vec<u8> = (0..300u32).map(|i| (i * 7 % 256) as u8).collect();
            assert_eq!(data.c_order_bytes().unwrap(), expected, "protocol {protocol}");

            assert_eq!(int_list(root.get("fine_labels")), [3, 300, 70000], "protocol {protocol}");
            let coarse = array(root.get("coarse_labels"));
            assert_eq!(coarse.to_i64_vec().unwrap(), [1, -2, 3], "protocol {protocol}");

            let fortran = array(root.get("fortran"));
            assert!(fortran.fortran_order, "protocol {protocol}");
            assert_eq!(fortran.shape, [2, 3], "protocol {protocol}");
            assert_eq!(fortran.c_order_bytes().unwrap(), [0, 1, 2, 3, 4, 5], "protocol {protocol}");

            match root.get("batch_label") {
                Some(Value::Str(s)) => assert_eq!(&*s, "training batch 1 of 1"),
                other => panic!("protocol {protocol}: batch_label is {other:?}"),
            }
            match root.get("filenames") {
                Some(Value::List(names)) => {
                    let names = names.borrow();
                    assert!(matches!(&names[1], Value::Bytes(b) if b.as_slice() == b"b.png"));
                }
                other => panic!("protocol {protocol}: filenames is {other:?}"),
            }
            assert_eq!(int_list(root.get("second")), [1, 2], "protocol {protocol}");
            assert_eq!(
                root.text_keys(),
                [
                    "data",
                    "fine_labels",
                    "coarse_labels",
                    "batch_label",
                    "filenames",
                    "fortran",
                    "first",
                    "second"
                ],
                "protocol {protocol}"
            );
        }
    }

    /// Builds a pickle in the layout of the official CIFAR python files,
    /// which Python 2's cPickle wrote with protocol 2: byte-string keys, `numpy.core` globals, the
    /// dtype built from `('u1', 0, 1)` and the pixels as a BINSTRING.
    fn python2_batch(pixels: &[u8], labels: &[u8]) -> Vec<u8> {
        let mut out =
            b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03".to_vec();
        out.extend_from_slice(b"cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87Rq\x05(K\x01");
        out.extend_from_slice(b"K\x01K");
        out.push(pixels.len() as u8);
        out.extend_from_slice(b"\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07");
        out.extend_from_slice(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T");
        out.extend_from_slice(&(pixels.len() as u32).to_le_bytes());
        out.extend_from_slice(pixels);
        out.extend_from_slice(b"tbU\x06labelsq\x08]q\x09(");
        for &label in labels {
            out.extend_from_slice(&[b'K', label]);
        }
        // A key b"extra" whose value is the memoised key b"data".
        out.extend_from_slice(b"eU\x05extraq\x0ah\x02u.");
        out
    }

    #[test]
    fn python2_layout_with_byte_keys() {
        let root = parse(&python2_batch(&[9, 200, 3], &[4, 7])).unwrap();
        let data = array(root.get("data"));
        assert_eq!(data.shape, [1, 3]);
        assert_eq!(data.data, [9, 200, 3]);
        assert_eq!(int_list(root.get("labels")), [4, 7]);
        assert!(matches!(root.get("extra"), Some(Value::Bytes(b)) if b.as_slice() == b"data"));
    }

    #[test]
    fn truncated_pickle_names_the_offset() {
        let bytes = NUMPY_PICKLES[1].1;
        let err = parse(&bytes[..400]).unwrap_err();
        assert!(matches!(err, PickleError::Truncated { len: 400, .. }), "{err}");
        let err = parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, PickleError::NoStop { .. }), "{err}");
    }

    #[test]
    fn protocol_zero_opcode_is_unsupported() {
        // INT in text form, as protocol 0 writes it.
        let err = parse(b"I42\n.").unwrap_err();
        assert!(matches!(err, PickleError::UnsupportedOpcode { opcode: b'I', offset: 0 }), "{err}");
        assert!(err.to_string().contains("protocols 2 to 5"), "{err}");
    }

    #[test]
    fn protocol_six_is_unsupported() {
        let err = parse(b"\x80\x06N.").unwrap_err();
        assert!(matches!(err, PickleError::UnsupportedProtocol(6)), "{err}");
    }

    #[test]
    fn out_of_band_buffer_is_rejected() {
        let err = parse(b"\x80\x05\x97.").unwrap_err();
        assert!(matches!(err, PickleError::OutOfBandBuffer { offset: 2 }), "{err}");
    }

    #[test]
    fn missing_memo_key_is_invalid() {
        let err = parse(b"\x80\x02h\x05.").unwrap_err();
        assert!(err.to_string().contains("memo key 5"), "{err}");
    }

    #[test]
    fn array_with_wrong_byte_count_is_invalid() {
        // A (1, 3) uint8 array whose data has 2 bytes.
        let mut bytes = python2_batch(&[1, 2, 3], &[0]);
        let pos = bytes.windows(4).position(|w| w == b"T\x03\x00\x00").unwrap();
        bytes.splice(pos..pos + 8, *b"T\x02\x00\x00\x00\x01\x02");
        let err = parse(&bytes).unwrap_err();
        assert!(err.to_string().contains("has 2 data bytes, expected 3"), "{err}");
    }

    #[test]
    fn unknown_callable_becomes_an_object() {
        let root = parse(b"\x80\x02cdatetime\ndate\nK\x01\x85R}b.").unwrap();
        assert!(matches!(&root, Value::Object(name) if &**name == "datetime.date"), "{root:?}");
    }

    #[test]
    fn long_integers_sign_extend() {
        let root = parse(b"\x80\x02(\x8a\x02\xff\x7f\x8a\x01\xff\x8a\x00l.").unwrap();
        let Value::List(items) = root else { panic!("not a list") };
        let items: Vec<i64> =
            items.borrow().iter().map(|v| if let Value::Int(i) = v { *i } else { 0 }).collect();
        assert_eq!(items, [32767, -1, 0]);
    }

    #[test]
    fn big_endian_int_array() {
        let dtype = Dtype { descr: "i2".into(), byte_order: '>' };
        let array = NdArray {
            dtype,
            shape: vec![2],
            fortran_order: false,
            data: vec![0xff, 0xfe, 0x01, 0x00],
        };
        assert_eq!(array.to_i64_vec().unwrap(), [-2, 256]);
    }
}
