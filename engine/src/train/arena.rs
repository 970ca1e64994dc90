//! The activation memory of a trainer: one allocation, planned once per (plan, batch, image
//! size) at construction, carved into the maps the forward pass keeps for backward and the
//! gradient buffers backward rotates through. No step allocates.

/// A region of the arena, in floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buf {
    pub offset: usize,
    pub len: usize,
}

/// Hands out regions, each aligned to 64 bytes.
#[derive(Debug, Default)]
pub struct ArenaPlan {
    total: usize,
}

impl ArenaPlan {
    pub fn alloc(&mut self, len: usize) -> Buf {
        let offset = self.total;
        self.total += len.next_multiple_of(16);
        Buf { offset, len }
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// The memory behind an [`ArenaPlan`].
pub struct Arena {
    data: Vec<f32>,
    /// Floats to skip so that offset 0 is 64-byte aligned.
    base: usize,
}

impl Arena {
    pub fn new(plan: &ArenaPlan) -> Arena {
        let data = vec![0.0f32; plan.total + 16];
        let base = (data.as_ptr() as usize).next_multiple_of(64) - data.as_ptr() as usize;
        Arena { data, base: base / 4 }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    pub fn ptr(&mut self, buf: Buf) -> *mut f32 {
        debug_assert!(self.base + buf.offset + buf.len <= self.data.len());
        unsafe { self.data.as_mut_ptr().add(self.base + buf.offset) }
    }

    pub fn slice(&self, buf: Buf) -> &[f32] {
        &self.data[self.base + buf.offset..self.base + buf.offset + buf.len]
    }
}
