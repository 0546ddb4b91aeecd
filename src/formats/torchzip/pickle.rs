//! The static pickle interpreter: it runs the opcodes of a pickle over a small value tree and
//! never calls anything. A `REDUCE` only records "call of global X with these arguments"; what
//! it keeps is every persistent storage id and, from each tensor rebuild call, the dtype and
//! shape it says its storage has.
//!
//! Invariants: the interpreter has no loops or calls, so it runs at most one opcode per pickle
//! byte; its stack and memo are capped at [`MAX_STACK`] and [`MAX_MEMO`]; values shared through
//! the memo are reference-counted; every allocation is charged, before it is made, to a budget
//! of [`PICKLE_MEMORY_BASE`] + [`PICKLE_MEMORY_PER_BYTE`] x the pickle's length, and charges are
//! never given back, so the sum of everything it allocates (an upper bound on its peak) stays
//! within that budget; no opcode panics on any operand.

#![warn(missing_docs)]

use super::{
    DType, MAX_MEMO, MAX_NESTING, MAX_STACK, PICKLE_MEMORY_BASE, PICKLE_MEMORY_PER_BYTE,
    TorchZipError, storage_dtype, to_u64, torch_dtype,
};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Whether `stride` is the row-major (C-contiguous) stride of `shape`. Dimensions of
/// length 1 may carry any stride (torch leaves them arbitrary), and a tensor with no
/// elements is laid out by any stride.
fn is_row_major(shape: &[u64], stride: &[Value]) -> bool {
    if stride.len() != shape.len() {
        return false;
    }
    if shape.contains(&0) {
        return true;
    }
    let mut expected = 1u64;
    for (&d, s) in shape.iter().zip(stride).rev() {
        let Value::Int(s) = s else { return false };
        if d != 1 && u64::try_from(*s).ok() != Some(expected) {
            return false;
        }
        let Some(next) = expected.checked_mul(d) else {
            return false;
        };
        expected = next;
    }
    true
}

/// What a pickle says about one storage key.
#[derive(Debug)]
pub(super) struct StorageRef {
    /// The storage key: the entry `<stem>/<p>/<key>` of the pickle `<stem>/<p>.pkl`.
    pub(super) key: String,
    /// The storage class name (`FloatStorage`, `UntypedStorage`, ...).
    class: String,
    /// The count the persistent id declares (bytes for `UntypedStorage`).
    declared: u64,
    /// From the storage class, or for `UntypedStorage` from a rebuild call naming a dtype.
    pub(super) dtype: Option<DType>,
    /// Elements of `dtype`; for an untyped storage whose dtype is unknown, bytes.
    pub(super) numel: u64,
    /// Shape of the first row-major view at offset 0 covering the whole storage.
    pub(super) shape: Option<Vec<u64>>,
}

/// A pickle failure, before the pickle's name is attached.
#[derive(Debug)]
pub(super) enum Fail {
    /// The opcode at byte `offset` broke the rule `what` ([`TorchZipError::Pickle`]).
    At { offset: u64, what: String },
    /// An opcode the interpreter does not run ([`TorchZipError::UnsupportedOpcode`]).
    Opcode { offset: u64, opcode: u8 },
    /// A malformed persistent id ([`TorchZipError::BadPersistentId`]).
    PersistentId(&'static str),
    /// Storage `key` declared twice with different `what` ([`TorchZipError::ConflictingStorage`]).
    Conflict { key: String, what: &'static str },
    /// The opcode at byte `offset` would go over the memory bound `limit`
    /// ([`TorchZipError::PickleMemory`]).
    Memory { offset: u64, limit: u64 },
}

impl Fail {
    /// The archive-level error, naming the `pickle` entry the failure is in.
    pub(super) fn into_error(self, pickle: &str) -> TorchZipError {
        let pickle = pickle.to_string();
        match self {
            Fail::At { offset, what } => TorchZipError::Pickle {
                pickle,
                offset,
                what,
            },
            Fail::Opcode { offset, opcode } => TorchZipError::UnsupportedOpcode {
                pickle,
                offset,
                opcode,
            },
            Fail::PersistentId(what) => TorchZipError::BadPersistentId { pickle, what },
            Fail::Conflict { key, what } => TorchZipError::ConflictingStorage {
                entry: format!("{pickle}: {key}"),
                what,
            },
            Fail::Memory { offset, limit } => TorchZipError::PickleMemory {
                pickle,
                offset,
                limit,
            },
        }
    }
}

/// The values the interpreter keeps. Containers are opaque: their contents are never needed,
/// because storages and rebuild calls are recorded when they are built.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    /// An integer that does not fit in 64 bits.
    BigInt,
    Float,
    Str(Rc<str>),
    Bytes,
    /// A tuple, and how deep it nests (1 for a tuple holding no tuple).
    Tuple(Rc<[Value]>, u32),
    /// `module.name`, sharing the strings it was built from (a memoized string fed to
    /// STACK_GLOBAL again and again costs nothing new).
    Global(Rc<(Rc<str>, Rc<str>)>),
    /// A persistent storage id: its index in the interpreter's refs.
    Storage(usize),
    /// A list, dict, set, or the result of a call or of NEWOBJ.
    Opaque,
}

/// A value-stack slot: a MARK, or a value.
enum Slot {
    Mark,
    Value(Value),
}

/// The interpreter's state while it runs one pickle.
struct Machine<'a> {
    /// The whole pickle.
    code: &'a [u8],
    /// Offset of the next byte to read.
    pos: usize,
    /// Offset of the opcode being run, for messages.
    op_at: usize,
    stack: Vec<Slot>,
    memo: BTreeMap<u32, Value>,
    /// Storages in the order their persistent ids first appear.
    refs: Vec<StorageRef>,
    /// Index into `refs` by storage key.
    by_key: BTreeMap<String, usize>,
    /// Bytes charged so far for what the interpreter allocated, and the most it may charge.
    charged: u64,
    limit: u64,
    /// The deepest the stack has been: a slot is charged when the stack first grows to it.
    stack_high: usize,
}

/// What the interpreter charges, in bytes, for what it allocates: a value-stack slot (with the
/// stack's spare capacity: a vector at most doubles); a memo slot (a B-tree entry with its share
/// of a half-full node, as sequential keys leave them); the allocator's overhead per allocation
/// (glibc's header and rounding to 16 bytes); and a reference count's header.
const SLOT_COST: u64 = 2 * size_of::<Slot>() as u64;
const MEMO_SLOT_COST: u64 = 64;
const ALLOC_COST: u64 = 16;
const RC_COST: u64 = 16;

/// Run a whole pickle, which must end with `STOP` at its last byte, and return the storages it
/// declares.
pub(super) fn run(code: &[u8]) -> Result<Vec<StorageRef>, Fail> {
    let mut m = Machine::new(code, memory_limit(code.len()));
    m.run()?;
    Ok(m.refs)
}

/// The memory bound of a pickle of `len` bytes.
fn memory_limit(len: usize) -> u64 {
    PICKLE_MEMORY_PER_BYTE
        .saturating_mul(to_u64(len))
        .saturating_add(PICKLE_MEMORY_BASE)
}

/// Run a whole pickle, as [`run`] but unbounded, and return what it charged to its budget.
#[cfg(test)]
pub(super) fn charged(code: &[u8]) -> Result<u64, Fail> {
    let mut m = Machine::new(code, u64::MAX);
    m.run()?;
    Ok(m.charged)
}

/// Bytes charged for `n` items of `T` in one allocation.
fn cost_of<T>(n: usize) -> u64 {
    to_u64(size_of::<T>())
        .saturating_mul(to_u64(n))
        .saturating_add(ALLOC_COST)
}

const TORCH_UTILS: &str = "torch._utils";

impl<'a> Machine<'a> {
    /// A machine about to run `code`, allowed to charge `limit` bytes.
    fn new(code: &'a [u8], limit: u64) -> Machine<'a> {
        Machine {
            code,
            pos: 0,
            op_at: 0,
            stack: Vec::new(),
            memo: BTreeMap::new(),
            refs: Vec::new(),
            by_key: BTreeMap::new(),
            charged: 0,
            limit,
            stack_high: 0,
        }
    }

    fn fail(&self, what: impl Into<String>) -> Fail {
        Fail::At {
            offset: to_u64(self.op_at),
            what: what.into(),
        }
    }

    /// Charge `bytes` to the memory budget before allocating them.
    fn charge(&mut self, bytes: u64) -> Result<(), Fail> {
        let charged = self.charged.saturating_add(bytes);
        if charged > self.limit {
            return Err(Fail::Memory {
                offset: to_u64(self.op_at),
                limit: self.limit,
            });
        }
        self.charged = charged;
        Ok(())
    }

    /// Check that `bytes` more, allocated only while one opcode runs, would fit the budget.
    fn fits(&self, bytes: u64) -> Result<(), Fail> {
        if self.charged.saturating_add(bytes) > self.limit {
            return Err(Fail::Memory {
                offset: to_u64(self.op_at),
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Push a slot, charging for it when the stack grows deeper than it has been.
    fn push_slot(&mut self, slot: Slot) -> Result<(), Fail> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.fail(format!("stack deeper than {MAX_STACK}")));
        }
        if self.stack.len() >= self.stack_high {
            self.charge(SLOT_COST)?;
            self.stack_high = self.stack.len() + 1;
        }
        self.stack.push(slot);
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.code.len())
            .ok_or_else(|| self.fail("operand runs past the end of the pickle"))?;
        let code: &'a [u8] = self.code;
        let b = code.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(b)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], Fail> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Fail> {
        Ok(self.arr::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Fail> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn len_u32(&mut self) -> Result<usize, Fail> {
        let n = self.u32()?;
        usize::try_from(n).map_err(|_| self.fail("length does not fit"))
    }

    fn len_u64(&mut self) -> Result<usize, Fail> {
        let n = u64::from_le_bytes(self.arr()?);
        usize::try_from(n).map_err(|_| self.fail("length does not fit"))
    }

    /// A newline-terminated text operand (GLOBAL, PUT, GET, INT, PERSID).
    fn line(&mut self) -> Result<&'a str, Fail> {
        let rest = self.code.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.fail("text operand without a newline"))?;
        let b = self.take(n + 1)?;
        let b = b.get(..n).unwrap_or_default();
        std::str::from_utf8(b).map_err(|_| self.fail("text operand is not UTF-8"))
    }

    fn str_operand(&mut self, n: usize) -> Result<Value, Fail> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.fail("string is not UTF-8"))?;
        self.string(s)
    }

    /// A string value, charged for.
    fn string(&mut self, s: &str) -> Result<Value, Fail> {
        Ok(Value::Str(self.rc_str(s)?))
    }

    /// A shared copy of `s`, charged for.
    fn rc_str(&mut self, s: &str) -> Result<Rc<str>, Fail> {
        self.charge(cost_of::<u8>(s.len()).saturating_add(RC_COST))?;
        Ok(Rc::from(s))
    }

    /// A global `module.name`, charged for.
    fn global(&mut self, module: Rc<str>, name: Rc<str>) -> Result<Value, Fail> {
        self.charge(cost_of::<(Rc<str>, Rc<str>)>(1).saturating_add(RC_COST))?;
        Ok(Value::Global(Rc::new((module, name))))
    }

    /// A tuple of `items`, refused when it would nest deeper than [`MAX_NESTING`]: values are
    /// dropped recursively, so an unbounded depth (a 300 KB pickle can nest a tuple a few
    /// hundred thousand levels deep) would overflow the thread's stack.
    fn tuple(&mut self, items: Vec<Value>) -> Result<Value, Fail> {
        let inner = items
            .iter()
            .map(|v| match v {
                Value::Tuple(_, d) => *d,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        if inner >= MAX_NESTING {
            return Err(self.fail(format!("tuples nested deeper than {MAX_NESTING}")));
        }
        // The items were popped into a vector, which the tuple is copied from.
        let n = items.len();
        let tuple = cost_of::<Value>(n).saturating_add(RC_COST);
        self.fits(tuple.saturating_add(cost_of::<Value>(n)))?;
        self.charge(tuple)?;
        Ok(Value::Tuple(Rc::from(items), inner + 1))
    }

    fn push(&mut self, v: Value) -> Result<(), Fail> {
        self.push_slot(Slot::Value(v))
    }

    fn pop(&mut self) -> Result<Value, Fail> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.fail("expected a value, found a mark")),
            None => Err(self.fail("stack underflow")),
        }
    }

    fn top(&self) -> Result<&Value, Fail> {
        match self.stack.last() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.fail("expected a value, found a mark")),
            None => Err(self.fail("stack underflow")),
        }
    }

    /// Pop everything down to the topmost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, Fail> {
        let at = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| self.fail("no mark on the stack"))?;
        let items = self.stack.split_off(at);
        Ok(items
            .into_iter()
            .filter_map(|s| match s {
                Slot::Value(v) => Some(v),
                Slot::Mark => None,
            })
            .collect())
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, Fail> {
        let at = self
            .stack
            .len()
            .checked_sub(n)
            .ok_or_else(|| self.fail("stack underflow"))?;
        let items = self.stack.split_off(at);
        items
            .into_iter()
            .map(|s| match s {
                Slot::Value(v) => Ok(v),
                Slot::Mark => Err(self.fail("expected a value, found a mark")),
            })
            .collect()
    }

    fn put(&mut self, idx: u32) -> Result<(), Fail> {
        let v = self.top()?.clone();
        if !self.memo.contains_key(&idx) {
            if self.memo.len() >= MAX_MEMO {
                return Err(self.fail(format!("more than {MAX_MEMO} memo slots")));
            }
            self.charge(MEMO_SLOT_COST)?;
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn get(&mut self, idx: u32) -> Result<(), Fail> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.fail(format!("memo slot {idx} is empty")))?;
        self.push(v)
    }

    fn int_from_le(&self, b: &[u8]) -> Value {
        if b.is_empty() {
            return Value::Int(0);
        }
        if b.len() > 8 {
            // Fits only if the extra bytes are pure sign extension.
            let (lo, hi) = b.split_at(8);
            let neg = lo.last().is_some_and(|&x| x & 0x80 != 0);
            let fill = if neg { 0xff } else { 0 };
            if hi.iter().any(|&x| x != fill) {
                return Value::BigInt;
            }
            return self.int_from_le(lo);
        }
        let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        if let Some(dst) = buf.get_mut(..b.len()) {
            dst.copy_from_slice(b);
        }
        Value::Int(i64::from_le_bytes(buf))
    }

    fn run(&mut self) -> Result<(), Fail> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.fail(format!("unknown protocol {v}")));
                    }
                }
                // FRAME: framing is only a buffering hint.
                0x95 => {
                    self.arr::<8>()?;
                }
                // STOP
                b'.' => {
                    self.pop()?;
                    if self.pos != self.code.len() {
                        return Err(self.fail("bytes after STOP"));
                    }
                    return Ok(());
                }
                // GLOBAL
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    let (module, name) = (self.rc_str(module)?, self.rc_str(name)?);
                    let g = self.global(module, name)?;
                    self.push(g)?;
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(m, n)?;
                            self.push(g)?;
                        }
                        _ => return Err(self.fail("STACK_GLOBAL needs two strings")),
                    }
                }
                // BINPUT, LONG_BINPUT, PUT, MEMOIZE
                b'q' => {
                    let i = self.u8()?;
                    self.put(u32::from(i))?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.put(i)?;
                }
                b'p' => {
                    let i = self.line()?.parse::<u32>();
                    let i = i.map_err(|_| self.fail("PUT index is not a number"))?;
                    self.put(i)?;
                }
                0x94 => {
                    let i =
                        u32::try_from(self.memo.len()).map_err(|_| self.fail("memo overflow"))?;
                    self.put(i)?;
                }
                // BINGET, LONG_BINGET, GET
                b'h' => {
                    let i = self.u8()?;
                    self.get(u32::from(i))?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.get(i)?;
                }
                b'g' => {
                    let i = self.line()?.parse::<u32>();
                    let i = i.map_err(|_| self.fail("GET index is not a number"))?;
                    self.get(i)?;
                }
                // MARK, POP, POP_MARK, DUP
                b'(' => self.push_slot(Slot::Mark)?,
                b'0' => match self.stack.pop() {
                    Some(_) => {}
                    None => return Err(self.fail("stack underflow")),
                },
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                // Tuples
                b')' => {
                    let t = self.tuple(Vec::new())?;
                    self.push(t)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let t = self.tuple(items)?;
                    self.push(t)?;
                }
                0x85..=0x87 => {
                    let items = self.pop_n(usize::from(op - 0x84))?;
                    let t = self.tuple(items)?;
                    self.push(t)?;
                }
                // Containers: built, their contents dropped.
                b']' | b'}' | 0x8f => self.push(Value::Opaque)?,
                b'l' | b'd' | 0x91 => {
                    self.pop_mark()?;
                    self.push(Value::Opaque)?;
                }
                // APPEND, SETITEM
                b'a' => {
                    self.pop()?;
                    self.top()?;
                }
                b's' => {
                    self.pop_n(2)?;
                    self.top()?;
                }
                // APPENDS, SETITEMS, ADDITEMS
                b'e' | b'u' | 0x90 => {
                    let items = self.pop_mark()?;
                    if op == b'u' && items.len() % 2 != 0 {
                        return Err(self.fail("SETITEMS with an odd number of values"));
                    }
                    self.top()?;
                }
                // Scalars
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        self.len_u32()?
                    };
                    let b = self.take(n)?;
                    let v = self.int_from_le(b);
                    self.push(v)?;
                }
                // INT (protocol 0; "00"/"01" are booleans)
                b'I' => {
                    let v = match self.line()? {
                        "00" | "01" => Value::Bool,
                        s => s.parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.push(v)?;
                }
                b'G' => {
                    self.arr::<8>()?;
                    self.push(Value::Float)?;
                }
                // Strings
                b'X' => {
                    let n = self.len_u32()?;
                    let v = self.str_operand(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.str_operand(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.str_operand(n)?;
                    self.push(v)?;
                }
                // BINSTRING, SHORT_BINSTRING: protocol-2 byte strings, kept as text when
                // they are (torch never relies on them).
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.len_u32()?
                    } else {
                        usize::from(self.u8()?)
                    };
                    let b = self.take(n)?;
                    let v = match std::str::from_utf8(b) {
                        Ok(s) => self.string(s)?,
                        Err(_) => Value::Bytes,
                    };
                    self.push(v)?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.len_u32()?,
                        b'C' => usize::from(self.u8()?),
                        _ => self.len_u64()?,
                    };
                    self.take(n)?;
                    self.push(Value::Bytes)?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v)?;
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.reduce(&func, &args)?;
                    self.push(Value::Opaque)?;
                }
                // BUILD: the state is applied to the object; both stay opaque.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                // NEWOBJ
                0x81 => {
                    self.pop_n(2)?;
                    self.push(Value::Opaque)?;
                }
                // NEWOBJ_EX
                0x92 => {
                    self.pop_n(3)?;
                    self.push(Value::Opaque)?;
                }
                _ => {
                    return Err(Fail::Opcode {
                        offset: to_u64(self.op_at),
                        opcode: op,
                    });
                }
            }
        }
    }

    /// Check a persistent id and record the storage it names.
    fn persistent(&mut self, pid: Value) -> Result<Value, Fail> {
        let Value::Tuple(t, _) = pid else {
            return Err(Fail::PersistentId("not a tuple"));
        };
        let [tag, class, key, location, numel] = &t[..] else {
            return Err(Fail::PersistentId("not five fields"));
        };
        if !matches!(tag, Value::Str(s) if &**s == "storage") {
            return Err(Fail::PersistentId("first field is not 'storage'"));
        }
        let Value::Global(g) = class else {
            return Err(Fail::PersistentId("second field is not a global"));
        };
        let (module, name) = (&*g.0, &*g.1);
        if module != "torch" || !name.ends_with("Storage") {
            return Err(Fail::PersistentId("storage type is not torch.<T>Storage"));
        }
        let Value::Str(key) = key else {
            return Err(Fail::PersistentId("key is not a string"));
        };
        if key.is_empty() || key.contains('/') {
            return Err(Fail::PersistentId("key is empty or contains '/'"));
        }
        if !matches!(location, Value::Str(_)) {
            return Err(Fail::PersistentId("location is not a string"));
        }
        let numel = match numel {
            Value::Int(n) => {
                u64::try_from(*n).map_err(|_| Fail::PersistentId("numel is negative"))?
            }
            _ => return Err(Fail::PersistentId("numel is not an integer")),
        };
        let dtype = storage_dtype(name);
        if let Some(&i) = self.by_key.get(&**key) {
            let prev = self
                .refs
                .get(i)
                .ok_or(Fail::PersistentId("internal index"))?;
            if prev.declared != numel {
                return Err(Fail::Conflict {
                    key: key.to_string(),
                    what: "element counts",
                });
            }
            if prev.class != name {
                return Err(Fail::Conflict {
                    key: key.to_string(),
                    what: "storage types",
                });
            }
            return Ok(Value::Storage(i));
        }
        // The record, its key twice (record and index) and class, and an index entry.
        self.charge(
            cost_of::<StorageRef>(1)
                .saturating_add(cost_of::<u8>(key.len()).saturating_mul(2))
                .saturating_add(cost_of::<u8>(name.len()))
                .saturating_add(MEMO_SLOT_COST),
        )?;
        let i = self.refs.len();
        self.refs.push(StorageRef {
            key: key.to_string(),
            class: name.to_string(),
            declared: numel,
            dtype,
            numel,
            shape: None,
        });
        self.by_key.insert(key.to_string(), i);
        Ok(Value::Storage(i))
    }

    /// Record what a tensor rebuild call says about its storage; other calls are opaque.
    fn reduce(&mut self, func: &Value, args: &Value) -> Result<(), Fail> {
        let Value::Global(g) = func else {
            return Ok(());
        };
        let (module, name) = (&*g.0, &*g.1);
        let is_rebuild = module == TORCH_UTILS
            && matches!(
                name,
                "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3"
            );
        let Value::Tuple(args, _) = args else {
            return if is_rebuild {
                Err(self.fail("tensor rebuild arguments are not a tuple"))
            } else {
                Ok(())
            };
        };
        if !is_rebuild {
            return Ok(());
        }
        let [Value::Storage(i), offset, size, ..] = &args[..] else {
            return Err(self.fail("tensor rebuild does not start with (storage, offset, size)"));
        };
        let offset = match offset {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
        .ok_or_else(|| self.fail("tensor storage offset is not a non-negative integer"))?;
        let Value::Tuple(size, _) = size else {
            return Err(self.fail("tensor size is not a tuple"));
        };
        self.charge(cost_of::<u64>(size.len()))?;
        let shape: Option<Vec<u64>> = size
            .iter()
            .map(|d| match d {
                Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            })
            .collect();
        let shape = shape.ok_or_else(|| self.fail("tensor size is not non-negative ints"))?;
        // `_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, ..)`
        // names the dtype of an untyped storage.
        let named = args.iter().find_map(|a| match a {
            Value::Global(g) if &*g.0 == "torch" => torch_dtype(&g.1),
            _ => None,
        });
        if let Some(d) = named {
            self.name_untyped_dtype(*i, d)?;
        }
        // A transposed or otherwise strided view covers its storage too, but the storage
        // is not laid out in the view's shape: only a row-major view says how it is.
        let row_major = match args.get(3) {
            Some(Value::Tuple(stride, _)) => is_row_major(&shape, stride),
            _ => false,
        };
        self.record_shape(*i, offset, shape, row_major)
    }

    /// A rebuild call named dtype `d` for storage `i`: an untyped storage takes it (its declared
    /// count, bytes, must then be whole elements of `d`), and must not be given two.
    fn name_untyped_dtype(&mut self, i: usize, d: DType) -> Result<(), Fail> {
        let r = self
            .refs
            .get(i)
            .ok_or(Fail::PersistentId("internal index"))?;
        if r.class != "UntypedStorage" {
            return Ok(());
        }
        match r.dtype {
            Some(prev) if prev != d => Err(Fail::Conflict {
                key: r.key.clone(),
                what: "dtypes",
            }),
            Some(_) => Ok(()),
            None => {
                // The untyped count is bytes: it must be whole elements of `d`.
                let width = d.byte_width().and_then(|w| u64::try_from(w).ok());
                let numel = width
                    .filter(|&w| w > 0 && r.declared % w == 0)
                    .map(|w| r.declared / w)
                    .ok_or_else(|| {
                        self.fail(format!(
                            "untyped storage of {} bytes is not a whole number of {d} elements",
                            r.declared
                        ))
                    })?;
                let r = self
                    .refs
                    .get_mut(i)
                    .ok_or(Fail::PersistentId("internal index"))?;
                r.dtype = Some(d);
                r.numel = numel;
                Ok(())
            }
        }
    }

    /// The first row-major view at offset 0 that covers all of storage `i` gives it its shape.
    fn record_shape(
        &mut self,
        i: usize,
        offset: u64,
        shape: Vec<u64>,
        row_major: bool,
    ) -> Result<(), Fail> {
        let r = self
            .refs
            .get_mut(i)
            .ok_or(Fail::PersistentId("internal index"))?;
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        if r.shape.is_none() && offset == 0 && numel == Some(r.numel) && row_major {
            r.shape = Some(shape);
        }
        Ok(())
    }
}
