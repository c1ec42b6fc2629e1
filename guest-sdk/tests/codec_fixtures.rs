//! Frozen bytes of the default codec (`docs/CODEC.md`): every SDK, in every
//! language, must encode these values to exactly these bytes and decode these
//! bytes to these values, so that a history written by one language replays
//! in another.
//!
//! `tests/fixtures/<name>.bin` holds the encoding of one value below, and
//! `tests/fixtures/codec.json` maps each name to the value's JSON (as the
//! tooling codecs print it). The Python SDK's tests
//! (`guest-sdk/python/tests/test_fixtures.py`) read both files.
//!
//! The bytes must never change: events are stored forever. Only to add a
//! fixture, regenerate with
//! `CAIRN_BLESS_CODEC=1 cargo test -p cairn-guest --test codec_fixtures`
//! and commit the new files (existing files must stay byte-identical).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;

use cairn_guest::codec::{decode, encode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The types of `examples/bank-account` (v1).
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct State {
        pub balance: i64,
        pub transactions: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub enum Command {
        Deposit { amount: i64 },
        Withdraw { amount: i64 },
        GetBalance,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub enum Event {
        Deposited { amount: i64 },
        Withdrawn { amount: i64 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum Reply {
        Text(String),
        Balance(i64),
    }
}

/// The events of `examples/bank-account-v2` as it writes them.
mod v2 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub enum Event {
        Credited {
            amount: i64,
            source: String,
        },
        Withdrawn {
            amount: i64,
            #[serde(default)]
            fee_waived: bool,
        },
        FeeCharged {
            amount: i64,
        },
    }
}

/// Every shape of serde data the codec specification covers.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Newtype(u64),
    Tuple(i64, String),
    Struct { x: i64, y: Option<String> },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Optionals {
    a: Option<i64>,
    b: Option<Option<String>>,
    c: Option<Vec<u8>>,
    d: Option<Shape>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Lists {
    empty: Vec<i64>,
    words: Vec<String>,
    /// A `Vec<u8>` is an array of integers, not MessagePack `bin`.
    bytes: Vec<u8>,
    nested: Vec<Vec<i64>>,
    sixteen: Vec<u32>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Scalars {
    yes: bool,
    no: bool,
    half: f64,
    single: f32,
    letter: char,
    unit: (),
    pair: (i64, bool),
    meters: Meters,
    marker: Marker,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Meters(u32);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Marker;

/// Field order is declaration order, not alphabetical.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    zebra: u8,
    apple: u8,
    mango: u8,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

const I64_EDGES: [i64; 23] = [
    0,
    1,
    127,
    128,
    255,
    256,
    65_535,
    65_536,
    4_294_967_295,
    4_294_967_296,
    i64::MAX,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32_768,
    -32_769,
    -2_147_483_648,
    -2_147_483_649,
    i64::MIN + 1,
    i64::MIN,
    -100,
];

const U64_EDGES: [u64; 9] = [
    0,
    127,
    128,
    255,
    256,
    65_535,
    65_536,
    4_294_967_296,
    u64::MAX,
];

/// One fixture: its name, bytes and JSON, checked both ways.
struct Fixtures {
    bless: bool,
    json: Vec<(String, String)>,
    failures: Vec<String>,
}

impl Fixtures {
    fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(&mut self, name: &str, value: T) {
        let bytes = encode(&value).expect("encodes");
        let back: T = decode(&bytes).expect("decodes");
        assert_eq!(back, value, "{name}: round trip");
        let json = serde_json::to_string(&value).expect("to JSON");
        let from_json: T = serde_json::from_str(&json).expect("from JSON");
        assert_eq!(from_json, value, "{name}: JSON round trip");
        let path = dir().join(format!("{name}.bin"));
        if self.bless {
            std::fs::write(&path, &bytes).expect("write fixture");
        } else {
            match std::fs::read(&path) {
                Ok(stored) if stored == bytes => {
                    let stored: T = decode(&stored).expect("stored bytes decode");
                    assert_eq!(stored, value, "{name}: stored bytes decode to the value");
                }
                Ok(stored) => self.failures.push(format!(
                    "{name}: encodes to {} but {} holds {}",
                    hex(&bytes),
                    path.display(),
                    hex(&stored)
                )),
                Err(e) => self
                    .failures
                    .push(format!("{name}: {}: {e}", path.display())),
            }
        }
        self.json.push((name.to_owned(), json));
    }

    /// Bytes no SDK writes but every decoder accepts, with the value they
    /// decode to (not stored as fixtures).
    fn accepts<T: DeserializeOwned + PartialEq + Debug>(bytes: &[u8], value: T) {
        assert_eq!(
            decode::<T>(bytes).expect("decodes"),
            value,
            "{}",
            hex(bytes)
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn codec_fixtures() {
    let mut f = Fixtures {
        bless: std::env::var_os("CAIRN_BLESS_CODEC").is_some(),
        json: Vec::new(),
        failures: Vec::new(),
    };

    // The bank account, v1 (examples/bank-account).
    f.check("v1_event_deposited", v1::Event::Deposited { amount: 100 });
    f.check("v1_event_withdrawn", v1::Event::Withdrawn { amount: 30 });
    f.check(
        "v1_event_deposited_large",
        v1::Event::Deposited { amount: 1_000_000 },
    );
    f.check("v1_state_initial", v1::State::default());
    f.check(
        "v1_state",
        v1::State {
            balance: 120,
            transactions: 3,
        },
    );
    f.check(
        "v1_state_negative",
        v1::State {
            balance: -7,
            transactions: 70_000,
        },
    );
    f.check("v1_command_deposit", v1::Command::Deposit { amount: 100 });
    f.check("v1_command_withdraw", v1::Command::Withdraw { amount: 30 });
    f.check(
        "v1_command_withdraw_negative",
        v1::Command::Withdraw { amount: -5 },
    );
    f.check("v1_command_get_balance", v1::Command::GetBalance);
    f.check("v1_reply_ok", v1::Reply::Text("ok".into()));
    f.check(
        "v1_reply_insufficient",
        v1::Reply::Text("insufficient funds (balance: 120)".into()),
    );
    f.check("v1_reply_balance", v1::Reply::Balance(120));
    f.check("v1_reply_balance_negative", v1::Reply::Balance(-7));

    // The bank account, v2 (examples/bank-account-v2).
    f.check(
        "v2_event_credited",
        v2::Event::Credited {
            amount: 100,
            source: "deposit".into(),
        },
    );
    f.check(
        "v2_event_withdrawn",
        v2::Event::Withdrawn {
            amount: 30,
            fee_waived: false,
        },
    );
    f.check("v2_event_fee_charged", v2::Event::FeeCharged { amount: 1 });

    // Every shape.
    f.check("shape_unit", Shape::Unit);
    f.check("shape_newtype", Shape::Newtype(7));
    f.check("shape_tuple", Shape::Tuple(-1, "x".into()));
    f.check(
        "shape_struct",
        Shape::Struct {
            x: 300,
            y: Some("y".into()),
        },
    );
    f.check(
        "optionals_some",
        Optionals {
            a: Some(-200),
            b: Some(Some("inner".into())),
            c: Some(vec![1, 2, 255]),
            d: Some(Shape::Struct { x: 1, y: None }),
        },
    );
    f.check(
        "optionals_none",
        Optionals {
            a: None,
            b: None,
            c: None,
            d: None,
        },
    );
    f.check(
        "lists",
        Lists {
            empty: vec![],
            words: vec!["".into(), "a".into()],
            bytes: vec![0, 127, 128, 255],
            nested: vec![vec![], vec![1, -1]],
            sixteen: (0..16).collect(),
        },
    );
    f.check(
        "scalars",
        Scalars {
            yes: true,
            no: false,
            half: 0.5,
            single: -1.25,
            letter: 'é',
            unit: (),
            pair: (-3, true),
            meters: Meters(70_000),
            marker: Marker,
        },
    );
    f.check(
        "order",
        Order {
            zebra: 1,
            apple: 2,
            mango: 3,
        },
    );
    f.check("ints_i64", I64_EDGES.to_vec());
    f.check("ints_u64", U64_EDGES.to_vec());
    f.check(
        "strings",
        vec![
            String::new(),
            "héllo wörld ✓ 🦀".into(),
            "quote \" backslash \\ newline \n tab \t nul \u{0}".into(),
            "x".repeat(31),
            "x".repeat(32),
            "x".repeat(255),
            "x".repeat(256),
        ],
    );
    // JSON of floats is serde_json's (ryu) layout: `1e16`, `0.00001`, `3.0`.
    f.check(
        "floats_f64",
        vec![
            0.0,
            -0.0,
            3.0,
            0.1,
            -2.5e-10,
            1e-5,
            1e-6,
            1e15,
            1e16,
            1e17,
            123_456.789,
            1_234_567_890_123_456.8,
            1.5e300,
            5e-324,
            f64::MAX,
        ],
    );
    f.check(
        "floats_f32",
        vec![
            0.1f32,
            -1.25,
            1e10,
            1e13,
            1e14,
            1e-5,
            1e-6,
            1e-7,
            16_777_216.0,
            f32::MAX,
        ],
    );
    f.check(
        "map",
        (0..16)
            .map(|i| (format!("k{i:02}"), i64::from(i) - 8))
            .collect::<BTreeMap<String, i64>>(),
    );

    if f.bless {
        let mut index = String::from("{\n");
        for (i, (name, json)) in f.json.iter().enumerate() {
            let comma = if i + 1 < f.json.len() { "," } else { "" };
            index.push_str(&format!(
                "  {}: {json}{comma}\n",
                serde_json::to_string(name).unwrap()
            ));
        }
        index.push_str("}\n");
        std::fs::write(dir().join("codec.json"), index).expect("write codec.json");
    } else {
        let index = std::fs::read_to_string(dir().join("codec.json")).expect("codec.json");
        let index: serde_json::Value = serde_json::from_str(&index).expect("codec.json parses");
        for (name, json) in &f.json {
            let mine: serde_json::Value = serde_json::from_str(json).unwrap();
            if index.get(name) != Some(&mine) {
                f.failures
                    .push(format!("{name}: codec.json differs from {json}"));
            }
        }
    }
    assert!(
        f.failures.is_empty(),
        "the default codec changed (see docs/CODEC.md):\n{}",
        f.failures.join("\n")
    );
}

/// What decoders accept beyond what encoders write (docs/CODEC.md, "Decoding").
#[test]
fn decoding_is_lenient_where_the_specification_says_so() {
    // Unknown fields are skipped; a missing `Option` field is `None`; a
    // missing `#[serde(default)]` field is its default.
    #[derive(Debug, PartialEq, Deserialize)]
    struct Narrow {
        amount: i64,
        note: Option<String>,
        #[serde(default)]
        fee_waived: bool,
    }
    let wide = encode(&v2::Event::Credited {
        amount: 5,
        source: "s".into(),
    })
    .unwrap();
    // {"Credited": {"amount": 5, "source": "s"}} → the inner map.
    Fixtures::accepts(
        &wide[1 + 9..],
        Narrow {
            amount: 5,
            note: None,
            fee_waived: false,
        },
    );
    // Any integer width decodes if the value fits.
    Fixtures::accepts(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 5], 5u8);
    Fixtures::accepts(&[0xcd, 0, 5], 5i64);
    // A struct may come as an array of its fields in order.
    Fixtures::accepts(
        &[0x92, 0x05, 0x03],
        v1::State {
            balance: 5,
            transactions: 3,
        },
    );
    // A unit variant may come as a one-entry map with a nil value.
    Fixtures::accepts(
        &[
            0x81, 0xaa, b'G', b'e', b't', b'B', b'a', b'l', b'a', b'n', b'c', b'e', 0xc0,
        ],
        v1::Command::GetBalance,
    );
    // An integer float field accepts an integer.
    #[derive(Debug, PartialEq, Deserialize)]
    struct F {
        f: f64,
    }
    Fixtures::accepts(&[0x81, 0xa1, b'f', 0x03], F { f: 3.0 });
    // Rejected: an unknown variant, a value out of range, a wrong type.
    assert!(decode::<v1::Event>(&encode(&v2::Event::FeeCharged { amount: 1 }).unwrap()).is_err());
    assert!(decode::<u8>(&encode(&256u64).unwrap()).is_err());
    assert!(decode::<u64>(&encode(&-1i64).unwrap()).is_err());
    assert!(decode::<String>(&encode(&1i64).unwrap()).is_err());
    // A missing field without a default is an error.
    assert!(
        decode::<v1::State>(&[0x81, 0xa7, b'b', b'a', b'l', b'a', b'n', b'c', b'e', 0x01]).is_err()
    );
    // The 32-bit lengths (too big to commit as fixtures): str 32, array 32, map 32.
    assert_eq!(
        encode(&"x".repeat(65_536)).unwrap()[..5],
        [0xdb, 0, 1, 0, 0]
    );
    assert_eq!(
        encode(&"x".repeat(65_535)).unwrap()[..3],
        [0xda, 0xff, 0xff]
    );
    assert_eq!(encode(&vec![0u8; 65_536]).unwrap()[..5], [0xdd, 0, 1, 0, 0]);
    let big: BTreeMap<u32, bool> = (0..65_536).map(|i| (i, true)).collect();
    assert_eq!(encode(&big).unwrap()[..5], [0xdf, 0, 1, 0, 0]);
    // Some(None) is written as nil, so it reads back as None.
    let b = encode(&Some(None::<i64>)).unwrap();
    assert_eq!(b, [0xc0]);
    assert_eq!(decode::<Option<Option<i64>>>(&b).unwrap(), None);
}
