//! Checks on ONNX model bytes before any backend parses them: a model must
//! be self-contained.
//!
//! ONNX lets a tensor keep its data outside the model file
//! (`data_location = EXTERNAL`, with `location`, `offset` and `length`
//! entries), and both tract and ONNX Runtime resolve such a location against
//! the process's working directory when a model is loaded from memory. A
//! tenant's model could therefore read any file the server can read (its
//! admin key, every tenant's databases) into a tensor, and get it back as an
//! output. glia takes models as bytes, from uploads and from guests' raw
//! `wasi:nn` `load`, and has no directory they could legitimately refer to,
//! so a model that points anywhere outside itself is refused, on every path,
//! before a backend sees it.
//!
//! The check walks the protobuf wire format of `ModelProto` and descends
//! only into the messages that can hold a `TensorProto` (graphs,
//! initializers, sparse initializers, node attributes and their subgraphs,
//! training graphs, model-local functions). It copies nothing, so it costs a
//! pass over the message headers, not over the weights. It is stricter than
//! the backends' parsers: wire types that do not match the schema, groups,
//! nesting deeper than protobuf's own recursion limit, and ONNX Runtime's
//! flatbuffer model format are refused too, and none of them appears in a
//! model an ONNX exporter writes.

use super::NnError;

/// Deepest nesting of messages walked (protobuf's default recursion limit).
const MAX_DEPTH: usize = 100;

/// The flatbuffer file identifier of ONNX Runtime's own model format, which
/// ONNX Runtime detects and loads from the same bytes.
const ORT_FORMAT_IDENTIFIER: &[u8] = b"ORTM";

/// Why a model is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A tensor keeps its data outside the model.
    ExternalData,
    /// The bytes are not a protobuf this check can follow.
    Malformed,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// ONNX Runtime's flatbuffer format.
    OrtFormat,
}

impl Refusal {
    fn into_error(self) -> NnError {
        NnError::InvalidEncoding(
            match self {
                Refusal::ExternalData => {
                    "the model refers to external tensor data; only self-contained models are \
                     accepted (store the weights inside the model file)"
                }
                Refusal::Malformed => "not a loadable ONNX model: malformed protobuf",
                Refusal::TooDeep => "not a loadable ONNX model: its graphs are nested too deeply",
                Refusal::OrtFormat => {
                    "ONNX Runtime's own model format is not accepted; upload the ONNX model"
                }
            }
            .to_string(),
        )
    }
}

/// Refuses ONNX model bytes that refer to data outside themselves, or that
/// this check cannot follow. Every ONNX backend runs it before parsing.
pub fn check_self_contained(bytes: &[u8]) -> Result<(), NnError> {
    if bytes.get(4..8) == Some(ORT_FORMAT_IDENTIFIER) {
        return Err(Refusal::OrtFormat.into_error());
    }
    walk(bytes, Message::Model, 0).map_err(Refusal::into_error)
}

/// The ONNX messages that can contain a `TensorProto`, and the `TensorProto`
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    TrainingInfo,
    Function,
}

impl Message {
    /// The message a length-delimited field of this message holds, when it
    /// is one that can contain a tensor (field numbers from `onnx.proto3`).
    fn child(self, field: u64) -> Option<Message> {
        use Message::*;
        Some(match (self, field) {
            // ModelProto: graph, training_info, functions.
            (Model, 7) => Graph,
            (Model, 20) => TrainingInfo,
            (Model, 25) => Function,
            // GraphProto: node, initializer, sparse_initializer.
            (Graph, 1) => Node,
            (Graph, 5) => Tensor,
            (Graph, 15) => SparseTensor,
            // NodeProto: attribute.
            (Node, 5) => Attribute,
            // AttributeProto: t, g, tensors, graphs, sparse_tensor,
            // sparse_tensors.
            (Attribute, 5 | 10) => Tensor,
            (Attribute, 6 | 11) => Graph,
            (Attribute, 22 | 23) => SparseTensor,
            // SparseTensorProto: values, indices.
            (SparseTensor, 1 | 2) => Tensor,
            // TrainingInfoProto: initialization, algorithm.
            (TrainingInfo, 1 | 2) => Graph,
            // FunctionProto: node, attribute_proto.
            (Function, 7) => Node,
            (Function, 11) => Attribute,
            _ => return None,
        })
    }
}

/// `TensorProto.external_data` (repeated `StringStringEntryProto`).
const TENSOR_EXTERNAL_DATA: u64 = 13;
/// `TensorProto.data_location` (enum; `DEFAULT` is 0).
const TENSOR_DATA_LOCATION: u64 = 14;

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

fn walk(mut bytes: &[u8], message: Message, depth: usize) -> Result<(), Refusal> {
    if depth > MAX_DEPTH {
        return Err(Refusal::TooDeep);
    }
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(Refusal::Malformed);
        }
        if message == Message::Tensor {
            match field {
                TENSOR_EXTERNAL_DATA => return Err(Refusal::ExternalData),
                // Any location but DEFAULT, in any encoding.
                TENSOR_DATA_LOCATION => {
                    if wire != VARINT || varint(&mut bytes)? != 0 {
                        return Err(Refusal::ExternalData);
                    }
                    continue;
                }
                _ => {}
            }
        }
        match wire {
            VARINT => {
                varint(&mut bytes)?;
            }
            FIXED64 => bytes = bytes.get(8..).ok_or(Refusal::Malformed)?,
            FIXED32 => bytes = bytes.get(4..).ok_or(Refusal::Malformed)?,
            LENGTH_DELIMITED => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|_| Refusal::Malformed)?;
                if len > bytes.len() {
                    return Err(Refusal::Malformed);
                }
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                if let Some(child) = message.child(field) {
                    walk(value, child, depth + 1)?;
                }
            }
            // Groups (3, 4) and the undefined 6 and 7: no ONNX message has
            // them.
            _ => return Err(Refusal::Malformed),
        }
        // A field the schema declares as a message but sent with another
        // wire type: parsers disagree on it (skipped as unknown, or an
        // error), so it is refused.
        if wire != LENGTH_DELIMITED && message.child(field).is_some() {
            return Err(Refusal::Malformed);
        }
    }
    Ok(())
}

/// Reads a base-128 varint of at most ten bytes.
fn varint(bytes: &mut &[u8]) -> Result<u64, Refusal> {
    let mut value = 0u64;
    for (ix, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * ix);
        if byte & 0x80 == 0 {
            *bytes = bytes.get(ix + 1..).unwrap_or_default();
            return Ok(value);
        }
    }
    Err(Refusal::Malformed)
}

/// Writing ONNX protobufs: just enough of the format to build the small
/// models the tests and fuzzers load, with and without external data.
pub mod build {
    /// A length-delimited field.
    pub fn bytes(field: u64, value: &[u8]) -> Vec<u8> {
        let mut out = key(field, 2);
        out.extend(varint(value.len() as u64));
        out.extend_from_slice(value);
        out
    }

    /// A varint field.
    pub fn int(field: u64, value: u64) -> Vec<u8> {
        let mut out = key(field, 0);
        out.extend(varint(value));
        out
    }

    fn key(field: u64, wire: u64) -> Vec<u8> {
        varint(field << 3 | wire)
    }

    pub fn varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    /// `TensorProto` of `len` float32 elements (one dimension) named `name`:
    /// its data inline (`raw_data`), or kept in `location` at `offset`.
    pub fn float_tensor(name: &str, len: u64, external: Option<(&str, u64)>) -> Vec<u8> {
        let mut t = int(1, len); // dims
        t.extend(int(2, 1)); // data_type FLOAT
        t.extend(bytes(8, name.as_bytes()));
        match external {
            None => t.extend(bytes(9, &vec![0u8; usize::try_from(len * 4).unwrap_or(0)])),
            Some((location, offset)) => {
                let entry = |k: &str, v: &str| {
                    let mut e = bytes(1, k.as_bytes());
                    e.extend(bytes(2, v.as_bytes()));
                    bytes(13, &e)
                };
                t.extend(entry("location", location));
                t.extend(entry("offset", &offset.to_string()));
                t.extend(entry("length", &(len * 4).to_string()));
                t.extend(int(14, 1)); // data_location EXTERNAL
            }
        }
        t
    }

    /// `ValueInfoProto` of a float32 tensor of `dims`.
    pub fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
        let shape: Vec<u8> = dims.iter().flat_map(|d| bytes(1, &int(1, *d))).collect();
        let mut tensor_type = int(1, 1);
        tensor_type.extend(bytes(2, &shape));
        let mut info = bytes(1, name.as_bytes());
        info.extend(bytes(2, &bytes(1, &tensor_type)));
        info
    }

    /// A model of `n` matrix products in a row: `x` (`[dim, dim]` float32)
    /// times `w`, times `w` again, `n` times, to `y`. Every element of `w`
    /// is `1 / dim` (a dense matrix no optimizer can drop), so each product
    /// replaces every element of a row by the row's mean, and `y` of ones
    /// is ones. Heavy on purpose: `n` × `dim`³ multiply-adds a run.
    pub fn chain_model(n: usize, dim: u64) -> Vec<u8> {
        let mut graph = Vec::new();
        for i in 0..n {
            let input = if i == 0 {
                "x".to_string()
            } else {
                format!("h{i}")
            };
            let output = if i + 1 == n {
                "y".to_string()
            } else {
                format!("h{}", i + 1)
            };
            let mut node = bytes(1, input.as_bytes());
            node.extend(bytes(1, b"w"));
            node.extend(bytes(2, output.as_bytes()));
            node.extend(bytes(4, b"MatMul"));
            graph.extend(bytes(1, &node));
        }
        graph.extend(bytes(2, b"chain"));
        let side = usize::try_from(dim).unwrap_or(0);
        let mean = 1.0 / dim as f32;
        let weights: Vec<u8> = (0..side * side).flat_map(|_| mean.to_le_bytes()).collect();
        let mut w = int(1, dim);
        w.extend(int(1, dim));
        w.extend(int(2, 1));
        w.extend(bytes(8, b"w"));
        w.extend(bytes(9, &weights));
        graph.extend(bytes(5, &w));
        graph.extend(bytes(11, &value_info("x", &[dim, dim])));
        graph.extend(bytes(12, &value_info("y", &[dim, dim])));
        let mut model = int(1, 8);
        model.extend(bytes(8, &int(2, 13)));
        model.extend(bytes(7, &graph));
        model
    }

    /// A model whose graph adds its input `x` (`[len]` float32) to an
    /// initializer `w` and outputs `y`: with `external`, `w` is read from
    /// that file and offset, so the output is the file's bytes (as floats,
    /// plus the input).
    pub fn add_model(len: u64, external: Option<(&str, u64)>) -> Vec<u8> {
        let mut node = bytes(1, b"x");
        node.extend(bytes(1, b"w"));
        node.extend(bytes(2, b"y"));
        node.extend(bytes(4, b"Add"));
        let mut graph = bytes(1, &node);
        graph.extend(bytes(2, b"g"));
        graph.extend(bytes(5, &float_tensor("w", len, external)));
        graph.extend(bytes(11, &value_info("x", &[len])));
        graph.extend(bytes(12, &value_info("y", &[len])));
        let mut model = int(1, 8); // ir_version
        model.extend(bytes(8, &int(2, 13))); // opset_import { version: 13 }
        model.extend(bytes(7, &graph));
        model
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const DIGITS: &[u8] = include_bytes!("../../../functions/classify-digits/model/digits.onnx");

    fn refused(bytes: &[u8]) -> String {
        match check_self_contained(bytes) {
            Err(NnError::InvalidEncoding(m)) => m,
            other => panic!("accepted or wrong error: {other:?}"),
        }
    }

    #[test]
    fn self_contained_models_pass() {
        check_self_contained(DIGITS).expect("digits");
        check_self_contained(&add_model(4, None)).expect("inline weights");
    }

    #[test]
    fn external_data_is_refused_wherever_a_tensor_can_be() {
        let external = float_tensor("w", 2, Some(("glia-data/admin.key", 0)));
        let message = refused(&add_model(2, Some(("glia-data/admin.key", 8))));
        assert!(message.contains("external tensor data"), "{message}");
        assert!(!message.contains("glia-data"), "no path: {message}");

        let graph_with = |field: u64, value: &[u8]| bytes(7, &bytes(field, value));
        let node_with = |attribute: Vec<u8>| graph_with(1, &bytes(5, &attribute));
        let mut sparse = bytes(1, &external);
        sparse.extend(bytes(2, &float_tensor("i", 1, None)));
        let nested_graph = bytes(5, &external); // a GraphProto with an initializer
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("initializer", graph_with(5, &external)),
            ("sparse initializer", graph_with(15, &sparse)),
            ("attribute t", node_with(bytes(5, &external))),
            ("attribute tensors", node_with(bytes(10, &external))),
            ("attribute sparse_tensor", node_with(bytes(22, &sparse))),
            ("attribute sparse_tensors", node_with(bytes(23, &sparse))),
            ("subgraph g", node_with(bytes(6, &nested_graph))),
            ("subgraphs graphs", node_with(bytes(11, &nested_graph))),
            (
                "training initialization",
                bytes(20, &bytes(1, &nested_graph)),
            ),
            ("training algorithm", bytes(20, &bytes(2, &nested_graph))),
            (
                "function node attribute",
                bytes(25, &bytes(7, &bytes(5, &bytes(5, &external)))),
            ),
            (
                "function attribute_proto",
                bytes(25, &bytes(11, &bytes(5, &external))),
            ),
            (
                "data_location alone",
                graph_with(5, &[bytes(8, b"w"), int(14, 1)].concat()),
            ),
            (
                "an unknown data_location",
                graph_with(5, &[bytes(8, b"w"), int(14, 7)].concat()),
            ),
            (
                "data_location with another wire type",
                graph_with(5, &[bytes(8, b"w"), bytes(14, b"\x01")].concat()),
            ),
            (
                "external_data alone",
                graph_with(5, &[bytes(8, b"w"), bytes(13, b"")].concat()),
            ),
        ];
        for (case, model) in cases {
            let message = refused(&model);
            assert!(message.contains("external"), "{case}: {message}");
        }
        // DEFAULT, written out, is fine.
        check_self_contained(&graph_with(5, &[bytes(8, b"w"), int(14, 0)].concat()))
            .expect("data_location DEFAULT");
    }

    #[test]
    fn what_the_check_cannot_follow_is_refused() {
        let deep = (0..MAX_DEPTH + 2).fold(Vec::new(), |inner, _| {
            // node { attribute { g { node { ... } } } }
            bytes(1, &bytes(5, &bytes(6, &inner)))
        });
        assert!(refused(&bytes(7, &deep)).contains("nested too deeply"));
        for malformed in [
            vec![0x3a, 0x05, 0x01],              // graph longer than the bytes
            vec![0x0b],                          // a group
            vec![0x38, 0x01],                    // graph as a varint
            vec![0x08, 0x80, 0x80],              // truncated varint
            [&[0x08][..], &[0xff; 11]].concat(), // overlong varint
            vec![0x00, 0x00],                    // field 0
        ] {
            assert!(
                refused(&malformed).contains("malformed"),
                "{malformed:02x?}"
            );
        }
        let mut ort = vec![0u8; 16];
        ort[4..8].copy_from_slice(ORT_FORMAT_IDENTIFIER);
        assert!(refused(&ort).contains("ONNX Runtime's own model format"));
    }

    #[test]
    fn every_truncation_of_a_model_is_handled() {
        let model = add_model(3, Some(("x", 0)));
        for end in 0..model.len() {
            // Refused or accepted, never a panic; the external reference
            // is refused once it is in.
            let _ = check_self_contained(model.get(..end).unwrap_or_default());
        }
    }
}
