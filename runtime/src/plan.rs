//! Placement of a model's layers on the swarm's nodes (for `Pipeline` jobs): which node runs
//! which contiguous range of layers. Pure: the caller gives the model's shape (bytes per layer
//! read from the GGUF's tensor table, the embedding and head, the KV cache per layer) and
//! each candidate node's free memory (VRAM before RAM).
//!
//! The rules:
//! - VRAM first: if the GPUs of the nodes that have one can hold the model, the plan uses
//!   their VRAM only (by the rules below). Otherwise every node's whole offer (a GPU node's
//!   VRAM and the RAM its stage spills to) is planned.
//! - Every node that offers memory is a candidate, whether it holds the model file or not
//!   (one that does not fetches its stage's slice from a holder); at equal memory, holders
//!   come first.
//! - A model that fits on one node runs there whole: on the largest holder that can hold it,
//!   else on the node with the most free memory.
//! - Otherwise the layers are split in contiguous ranges, in proportion to free memory,
//!   largest node first. Stage 0 also holds the token embedding, the last stage the final
//!   norm and the output head.
//! - A node that cannot hold one layer and its KV cache is left out.
//! - If the nodes together cannot hold it, planning fails and says by how much.

use serde::{Deserialize, Serialize};

/// What a model needs, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// The tensors of each transformer layer, in order.
    pub layer_bytes: Vec<u64>,
    /// The token embedding (stage 0).
    pub embed_bytes: u64,
    /// The final norm and the output head (the last stage).
    pub head_bytes: u64,
    /// The KV cache of one layer at the planned context size.
    pub kv_bytes_per_layer: u64,
}

impl ModelShape {
    pub fn layers(&self) -> u32 {
        u32::try_from(self.layer_bytes.len()).unwrap_or(u32::MAX)
    }

    /// Everything, on one node.
    pub fn total_bytes(&self) -> u64 {
        self.range_bytes(0, self.layers()) + self.embed_bytes + self.head_bytes
    }

    /// Layers `first..end` with their KV caches.
    pub fn range_bytes(&self, first: u32, end: u32) -> u64 {
        self.layer_bytes[first as usize..end as usize]
            .iter()
            .map(|b| b + self.kv_bytes_per_layer)
            .sum()
    }
}

/// A candidate node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMemory {
    pub name: String,
    /// It holds the model file (a stage there fetches nothing).
    #[serde(default)]
    pub holds: bool,
    /// Free memory for the model: its GPU's VRAM and RAM.
    pub free_bytes: u64,
    /// Of `free_bytes`, the part on its GPU (0 without one).
    #[serde(default)]
    pub gpu_bytes: u64,
}

/// One stage of a plan: `node` runs layers `first..end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub node: String,
    pub first: u32,
    /// Exclusive.
    pub end: u32,
    /// What the stage holds: its layers and KV caches, plus the embedding (stage 0) and
    /// the head (the last stage).
    pub bytes: u64,
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the model has no layers")]
    NoLayers,
    #[error(
        "no node can hold even one layer ({need} bytes with its KV cache); add a node with more free memory"
    )]
    NoNodes { need: u64 },
    #[error(
        "the model needs {need} bytes and the nodes up offer {have}; add a node, or free memory (--stage-memory)"
    )]
    TooBig { need: u64, have: u64 },
    #[error(
        "the model needs {need} bytes and the nodes up offer {have}, but not in pieces that hold whole layers in order; add a node, or free memory"
    )]
    Fragmented { need: u64, have: u64 },
}

/// Place `shape` on `nodes` (see the module's rules).
pub fn plan(shape: &ModelShape, nodes: &[NodeMemory]) -> Result<Vec<Stage>, PlanError> {
    let gpus: Vec<NodeMemory> = nodes
        .iter()
        .filter(|n| n.gpu_bytes > 0)
        .map(|n| NodeMemory {
            free_bytes: n.gpu_bytes.min(n.free_bytes),
            ..n.clone()
        })
        .collect();
    if !gpus.is_empty()
        && let Ok(stages) = place(shape, &gpus)
    {
        return Ok(stages);
    }
    place(shape, nodes)
}

/// Place `shape` on `nodes` by their `free_bytes`.
fn place(shape: &ModelShape, nodes: &[NodeMemory]) -> Result<Vec<Stage>, PlanError> {
    let layers = shape.layers();
    if layers == 0 {
        return Err(PlanError::NoLayers);
    }
    let total = shape.total_bytes();
    let mut order: Vec<&NodeMemory> = nodes.iter().collect();
    // Largest first, holders first at equal memory, then by name: the same inputs give the
    // same plan on every node.
    order.sort_by(|a, b| {
        b.free_bytes
            .cmp(&a.free_bytes)
            .then(b.holds.cmp(&a.holds))
            .then(a.name.cmp(&b.name))
    });
    let whole = order
        .iter()
        .find(|n| n.holds && n.free_bytes >= total)
        .or(order.first());
    if let Some(best) = whole
        && best.free_bytes >= total
    {
        return Ok(vec![Stage {
            node: best.name.clone(),
            first: 0,
            end: layers,
            bytes: total,
        }]);
    }
    let one_layer = shape.layer_bytes.iter().max().copied().unwrap_or(0) + shape.kv_bytes_per_layer;
    order.retain(|n| n.free_bytes >= one_layer);
    if order.is_empty() {
        return Err(PlanError::NoNodes { need: one_layer });
    }
    let have: u64 = order.iter().map(|n| n.free_bytes).sum();
    if have < total {
        return Err(PlanError::TooBig { need: total, have });
    }
    // Largest first; if whole layers do not fit that way (the head or the embedding tips a
    // node over), the same order started further on.
    for start in 0..order.len() {
        let mut rotated = order.clone();
        rotated.rotate_left(start);
        if let Some(stages) = fill(shape, &rotated, have) {
            return Ok(stages);
        }
    }
    Err(PlanError::Fragmented { need: total, have })
}

/// Contiguous ranges in `order`, each node's end near its cumulative share of `have` (but no
/// less than the nodes after it leave over), given back to the next nodes where a node
/// cannot hold it. `None` if the last cannot.
fn fill(shape: &ModelShape, order: &[&NodeMemory], have: u64) -> Option<Vec<Stage>> {
    let layers = shape.layers();
    // What the nodes after each could take at most, in layers of the largest size.
    let one_layer = shape.layer_bytes.iter().max().copied().unwrap_or(0) + shape.kv_bytes_per_layer;
    let cap = |i: usize| {
        let head = if i + 1 == order.len() {
            shape.head_bytes
        } else {
            0
        };
        u32::try_from(order[i].free_bytes.saturating_sub(head) / one_layer.max(1))
            .unwrap_or(u32::MAX)
    };
    let mut after = vec![0u32; order.len() + 1];
    for i in (0..order.len()).rev() {
        after[i] = after[i + 1].saturating_add(cap(i));
    }
    let mut stages: Vec<Stage> = Vec::new();
    let mut start = 0u32;
    let mut cumulative: u128 = 0;
    for (i, node) in order.iter().enumerate() {
        if start == layers {
            break;
        }
        let last = i + 1 == order.len();
        cumulative += u128::from(node.free_bytes);
        let target =
            ((u128::from(layers) * cumulative + u128::from(have) / 2) / u128::from(have)) as u32;
        // At least what the nodes after this one cannot take.
        let mut end = if last {
            layers
        } else {
            target
                .max(layers.saturating_sub(after[i + 1]))
                .clamp(start, layers)
        };
        let bytes = |end: u32| {
            let mut b = shape.range_bytes(start, end);
            if start == 0 {
                b += shape.embed_bytes;
            }
            if end == layers {
                b += shape.head_bytes;
            }
            b
        };
        // Fit the node: give back layers (the next nodes take them).
        while end > start && bytes(end) > node.free_bytes {
            if last {
                return None;
            }
            end -= 1;
        }
        if end > start {
            stages.push(Stage {
                node: node.name.clone(),
                first: start,
                end,
                bytes: bytes(end),
            });
            start = end;
        }
    }
    (start == layers).then_some(stages)
}

/// `node → layers → bytes`, a line a stage, for `myco plan`.
pub fn explain(stages: &[Stage]) -> String {
    let mut out = String::new();
    for s in stages {
        out.push_str(&format!(
            "{:<16} layers {:>3}..{:<3} {:>8.1} MiB\n",
            s.node,
            s.first,
            s.end,
            s.bytes as f64 / (1 << 20) as f64
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn shape(layers: usize, layer: u64) -> ModelShape {
        ModelShape {
            layer_bytes: vec![layer; layers],
            embed_bytes: layer,
            head_bytes: layer,
            kv_bytes_per_layer: layer / 16,
        }
    }

    fn node(name: &str, free: u64) -> NodeMemory {
        NodeMemory {
            name: name.into(),
            holds: true,
            free_bytes: free,
            gpu_bytes: 0,
        }
    }

    fn gpu_node(name: &str, vram: u64, ram: u64) -> NodeMemory {
        NodeMemory {
            name: name.into(),
            holds: true,
            free_bytes: vram + ram,
            gpu_bytes: vram,
        }
    }

    #[test]
    fn vram_first_then_ram() {
        // About 17.5 GiB.
        let s = shape(32, GIB / 2);
        // Two GPUs that hold it together: only their VRAM is planned, even though the CPU
        // node has more RAM than either.
        let nodes = [
            gpu_node("gpu-a", 12 * GIB, 8 * GIB),
            gpu_node("gpu-b", 10 * GIB, 8 * GIB),
            node("cpu", 64 * GIB),
        ];
        let p = plan(&s, &nodes).unwrap();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|st| st.node.starts_with("gpu")), "{p:?}");
        let vram = |name: &str| nodes.iter().find(|n| n.name == name).unwrap().gpu_bytes;
        assert!(p.iter().all(|st| st.bytes <= vram(&st.node)), "{p:?}");

        // GPUs too small together: every offer counts, RAM included (here the CPU node
        // holds it whole).
        let small = [gpu_node("gpu-a", 4 * GIB, 8 * GIB), node("cpu", 64 * GIB)];
        assert_eq!(spans(&plan(&s, &small).unwrap()), [("cpu", 0, 32)]);

        // A GPU node alone, too small in VRAM: its stage spills to its RAM.
        let alone = [gpu_node("gpu-a", 8 * GIB, 16 * GIB)];
        assert_eq!(spans(&plan(&s, &alone).unwrap()), [("gpu-a", 0, 32)]);
    }

    #[test]
    fn nodes_without_the_file_take_stages_and_holders_win_ties() {
        let s = shape(8, GIB / 2);
        let lacks = |name: &str, free: u64| NodeMemory {
            holds: false,
            ..node(name, free)
        };
        // Only `h` holds the file; none can hold it alone: all three take a range.
        let nodes = [
            node("h", 5 * GIB / 2),
            lacks("a", 5 * GIB / 2),
            lacks("b", 5 * GIB / 2),
        ];
        let p = plan(&s, &nodes).unwrap();
        assert_eq!(p.len(), 3, "{p:?}");
        // Equal memory: the holder goes first (stage 0, which fetches the most if it must).
        assert_eq!(p[0].node, "h");
        // A holder that fits it whole runs it whole, even if a node without it is larger.
        let nodes = [node("h", 6 * GIB), lacks("big", 64 * GIB)];
        assert_eq!(spans(&plan(&s, &nodes).unwrap()), [("h", 0, 8)]);
        // No holder fits it: the largest node does, and fetches it.
        let nodes = [node("h", GIB), lacks("big", 64 * GIB)];
        assert_eq!(spans(&plan(&s, &nodes).unwrap())[0].0, "big");
    }

    fn spans(stages: &[Stage]) -> Vec<(&str, u32, u32)> {
        stages
            .iter()
            .map(|s| (s.node.as_str(), s.first, s.end))
            .collect()
    }

    #[test]
    fn a_model_that_fits_on_one_node_runs_there_whole() {
        let s = shape(32, GIB / 4);
        let nodes = [
            node("small", 4 * GIB),
            node("big", 24 * GIB),
            node("mid", 12 * GIB),
        ];
        let p = plan(&s, &nodes).unwrap();
        assert_eq!(spans(&p), [("big", 0, 32)]);
        assert_eq!(p[0].bytes, s.total_bytes());
    }

    #[test]
    fn layers_go_in_proportion_to_free_memory_and_a_tiny_node_is_left_out() {
        // 32 layers of 512 MiB (+32 MiB KV each): about 17.5 GiB in all.
        let s = shape(32, GIB / 2);
        let nodes = [
            node("b", 5 * GIB),
            node("a", 10 * GIB),
            node("pi", GIB / 4),
            node("c", 5 * GIB),
        ];
        let p = plan(&s, &nodes).unwrap();
        assert_eq!(spans(&p), [("a", 0, 16), ("b", 16, 24), ("c", 24, 32)]);
        let sum: u64 = p.iter().map(|s| s.bytes).sum();
        assert_eq!(sum, s.total_bytes(), "every byte in exactly one stage");
        let e = explain(&p);
        assert!(e.contains("a ") && e.contains("0..16"), "{e}");
    }

    #[test]
    fn too_little_memory_is_an_error_that_says_how_much() {
        let s = shape(8, GIB);
        let err = plan(&s, &[node("a", 3 * GIB), node("b", 3 * GIB)]).unwrap_err();
        assert!(
            matches!(err, PlanError::TooBig { have, .. } if have == 6 * GIB),
            "{err}"
        );
        let err = plan(&s, &[node("pi", GIB / 2)]).unwrap_err();
        assert!(matches!(err, PlanError::NoNodes { .. }), "{err}");
        assert_eq!(
            plan(&shape(0, 1), &[node("a", 1)]),
            Err(PlanError::NoLayers)
        );
    }

    #[test]
    fn when_largest_first_cannot_hold_the_head_another_order_is_tried() {
        // Layers of 1 byte, a head of 9: the big node must take the last layer and the head.
        let s = ModelShape {
            layer_bytes: vec![1, 1],
            embed_bytes: 0,
            head_bytes: 9,
            kv_bytes_per_layer: 0,
        };
        let p = plan(&s, &[node("big", 10), node("small", 2)]).unwrap();
        assert_eq!(spans(&p), [("small", 0, 1), ("big", 1, 2)]);
        let err = plan(&s, &[node("a", 6), node("b", 6)]).unwrap_err();
        assert!(
            matches!(err, PlanError::Fragmented { need: 11, have: 12 }),
            "{err}"
        );
    }

    proptest! {
        /// Any plan covers every layer once, in order, with no stage over its node's memory
        /// and the bytes adding up to the model; no plan only when memory is short.
        #[test]
        fn plans_cover_every_layer_once_within_memory(
            layers in prop::collection::vec(1u64..1000, 1..48),
            embed in 0u64..2000,
            head in 0u64..2000,
            kv in 0u64..100,
            free in prop::collection::vec(0u64..20_000, 1..6),
        ) {
            let s = ModelShape {
                layer_bytes: layers,
                embed_bytes: embed,
                head_bytes: head,
                kv_bytes_per_layer: kv,
            };
            let nodes: Vec<NodeMemory> = free
                .iter()
                .enumerate()
                .map(|(i, f)| node(&format!("n{i}"), *f))
                .collect();
            match plan(&s, &nodes) {
                Ok(p) => {
                    prop_assert_eq!(p[0].first, 0);
                    prop_assert_eq!(p.last().map(|s| s.end), Some(s.layers()));
                    for w in p.windows(2) {
                        prop_assert_eq!(w[0].end, w[1].first);
                    }
                    for st in &p {
                        prop_assert!(st.first < st.end);
                        let n = nodes.iter().find(|n| n.name == st.node).unwrap();
                        prop_assert!(st.bytes <= n.free_bytes);
                    }
                    prop_assert_eq!(p.iter().map(|s| s.bytes).sum::<u64>(), s.total_bytes());
                    let mut names: Vec<&str> = p.iter().map(|s| s.node.as_str()).collect();
                    names.dedup();
                    prop_assert_eq!(names.len(), p.len(), "a node appears once");
                }
                Err(PlanError::TooBig { need, have }) => prop_assert!(need > have),
                Err(PlanError::Fragmented { need, have }) => prop_assert!(need <= have),
                Err(PlanError::NoNodes { .. }) | Err(PlanError::NoLayers) => {}
            }
        }
    }
}
