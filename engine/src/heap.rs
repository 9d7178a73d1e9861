//! An owning pointer for memory that ring ends keep pointers into.
//!
//! `HeapRing` and `HeapStream` hand their ends raw pointers into their allocations and
//! then move into an `Arc`. Moving a `Box` asserts unique access and would invalidate
//! those pointers (Miri's Stacked Borrows), so the allocation is held as a raw pointer
//! here and freed on drop, like a `Box` that never claims uniqueness.

use std::ptr::NonNull;

/// A leaked `Box<T>`, freed when this is dropped.
pub(crate) struct HeapBox<T: ?Sized>(NonNull<T>);

impl<T: ?Sized> HeapBox<T> {
    pub(crate) fn new(value: Box<T>) -> Self {
        Self(NonNull::from(Box::leak(value)))
    }

    /// The allocation; valid until this `HeapBox` is dropped.
    pub(crate) fn ptr(&self) -> NonNull<T> {
        self.0
    }
}

impl<T: ?Sized> Drop for HeapBox<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `new` and is freed once, here.
        // Whoever was lent it (ring ends) held the Arc that owned us, so they are gone.
        unsafe { drop(Box::from_raw(self.0.as_ptr())) }
    }
}

// SAFETY: a HeapBox owns its T exactly as a Box does.
unsafe impl<T: ?Sized + Send> Send for HeapBox<T> {}
// SAFETY: as above: shared access to a HeapBox gives no access to T beyond `ptr`,
// whose users follow their own protocol (the rings' `from_raw` contracts).
unsafe impl<T: ?Sized + Sync> Sync for HeapBox<T> {}
