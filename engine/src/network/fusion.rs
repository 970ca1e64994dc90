//! Which layers run together. A depthwise conv whose output only the next layer, a pointwise
//! conv, reads never needs its whole map: the two run a band of rows at a time and the band
//! stays in cache. The same holds one step further out for the map a fused pair's depthwise conv
//! reads when its only producer is a pointwise expand (V2/V3 blocks) or another fused pair (V1's
//! blocks): that map is computed a few rows ahead into a ring. [`groups`] decides this once per
//! network, one [`Group`] per layer, and running, profiling, memory planning and band sizing all
//! match on it.

use super::layers::Layer;
use super::Network;

/// What a layer starts, or that it is run by an earlier layer's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Group {
    /// The layer runs alone, on whole maps.
    Single,
    /// Depthwise → pointwise: the pair runs a band of rows at a time and the depthwise map never
    /// leaves cache.
    Pair,
    /// Expand (pointwise) → depthwise → pointwise: a pair reading the expand's output through a
    /// ring of rows; neither the expanded nor the depthwise map is ever whole.
    Triple,
    /// Pair → pair (V1's blocks): the second pair reads the first's pointwise output through a
    /// ring of rows, as a triple reads its expand, so that map is never whole either.
    Chain,
    /// Run by the group an earlier layer starts.
    Inside,
}

impl Group {
    /// How many layers a group starting here runs (0 for [`Group::Inside`]).
    pub(super) fn len(self) -> usize {
        match self {
            Group::Single => 1,
            Group::Pair => 2,
            Group::Triple => 3,
            Group::Chain => 4,
            Group::Inside => 0,
        }
    }
}

/// The group of every layer: from the first layer on, each group starts where the previous one
/// ends and is the longest that fits (chain, then triple, then pair, then the layer alone).
/// `features` is the pooled map, which must stay whole.
pub(super) fn groups(layers: &[Layer], map_count: usize, features: usize) -> Vec<Group> {
    let mut readers = vec![0usize; map_count];
    for layer in layers {
        match layer {
            Layer::Direct { input, .. } | Layer::Depthwise { input, .. } => readers[*input] += 1,
            Layer::Pointwise { input, residual, .. } => {
                readers[*input] += 1;
                if let Some(r) = residual {
                    readers[*r] += 1;
                }
            }
            Layer::SqueezeExcite { map, .. } => readers[*map] += 1,
        }
    }
    // A map that only one layer reads and that need not stay whole (not the pooled one).
    let private = |output: usize| readers[output] == 1 && output != features;
    // Layers i, i + 1: a depthwise conv and the pointwise conv that alone reads it.
    let pair = |i: usize| match (&layers[i], layers.get(i + 1)) {
        (Layer::Depthwise { output, .. }, Some(Layer::Pointwise { input, .. })) => output == input && private(*output),
        _ => false,
    };
    // Layers i, i + 1, i + 2: an expand (without residual) that alone feeds the pair i + 1.
    let triple = |i: usize| match (&layers[i], layers.get(i + 1)) {
        (Layer::Pointwise { output, residual: None, .. }, Some(Layer::Depthwise { input, .. })) => {
            output == input && private(*output) && pair(i + 1)
        }
        _ => false,
    };
    // Layers i .. i + 3: a pair whose pointwise output alone feeds the pair i + 2.
    let chain = |i: usize| pair(i) && triple(i + 1);
    let mut groups = vec![Group::Inside; layers.len()];
    let mut i = 0;
    while i < layers.len() {
        let group = if chain(i) {
            Group::Chain
        } else if triple(i) {
            Group::Triple
        } else if pair(i) {
            Group::Pair
        } else {
            Group::Single
        };
        groups[i] = group;
        i += group.len();
    }
    groups
}

impl Network {
    /// The first layer of each group that runs together, in order, with its group.
    pub(super) fn group_starts(&self) -> impl Iterator<Item = (usize, Group)> + '_ {
        self.groups.iter().copied().enumerate().filter(|&(_, group)| group != Group::Inside)
    }

    /// Every fused depthwise → pointwise pair (a pair's, a triple's, both of a chain's), as the
    /// index of its depthwise conv; the pointwise conv follows it.
    pub(super) fn fused_pairs(&self) -> impl Iterator<Item = usize> + '_ {
        self.group_starts().flat_map(|(start, group)| {
            let offsets: &'static [usize] = match group {
                Group::Single | Group::Inside => &[],
                Group::Pair => &[0],
                Group::Triple => &[1],
                Group::Chain => &[0, 2],
            };
            offsets.iter().map(move |offset| start + offset)
        })
    }

    /// Every pair fed through a ring (a triple's, a chain's second), as the index of its
    /// depthwise conv, whose input is the ring's map.
    pub(super) fn ring_fed_pairs(&self) -> impl Iterator<Item = usize> + '_ {
        self.group_starts().filter_map(|(start, group)| match group {
            Group::Triple => Some(start + 1),
            Group::Chain => Some(start + 2),
            Group::Single | Group::Pair | Group::Inside => None,
        })
    }
}
