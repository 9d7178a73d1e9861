//! Frames and slots on a heap segment, so Miri checks the pointer code.

use bytemuck::Zeroable;

use super::*;
use crate::memory::Layout;

fn seg() -> Segment {
    Segment::on_heap(Layout::compute(1, 4, 64, 0).unwrap())
}

#[test]
fn descriptors_name_slots_or_are_refused() {
    let seg = seg();
    assert_eq!(OwnedSlot::from_descriptor(&seg, 3).unwrap().index(), 3);
    assert_eq!(OwnedSlot::from_descriptor(&seg, 4), Err(BadDescriptor(4)));
    assert_eq!(OwnedSlot::from_descriptor(&seg, 1 << 32), Err(BadDescriptor(1 << 32)));
    assert_eq!(OwnedSlot::from_descriptor(&seg, u64::MAX), Err(BadDescriptor(u64::MAX)));
    assert!({
        // SAFETY: a test segment of this test alone; each slot is minted once.
        unsafe { OwnedSlot::assigned(&seg, 4) }
    }
    .is_none());
}

#[test]
fn header_payload_and_error_text_round_trip() {
    let seg = seg();
    let mut slot = {
        // SAFETY: a test segment of this test alone; each slot is minted once.
        unsafe { OwnedSlot::assigned(&seg, 2) }
    }
    .unwrap();
    let mut h = SlotHeader::zeroed();
    h.len = 5;
    h.ticket = 9;
    let by = crate::frame::RanBy { record: 3, pid: 7 };
    mark_ran(&mut h, 0, by);
    mark_ran(&mut h, MAX_STAGES - 1, by);
    assert_eq!((h.ran_by, h.ran_by_pid), (4, 7));
    slot.set_header(&seg, &h);
    slot.payload_mut(&seg)[..5].copy_from_slice(b"hello");
    assert_eq!(slot.header(&seg), h);
    assert!(has_run(&h, 0) && has_run(&h, MAX_STAGES - 1) && !has_run(&h, 1));
    assert!(!has_run(&h, MAX_STAGES), "out of range is never set");
    assert_eq!(&slot.payload(&seg)[..5], b"hello");
    assert_eq!(slot.payload(&seg).len(), 64);
    // Error text is truncated to the area, on a char boundary.
    let long = "é".repeat(ERROR_CAPACITY);
    let n = slot.set_error_text(&seg, &long);
    assert!(n as usize <= ERROR_CAPACITY && n % 2 == 0);
    assert_eq!(slot.error_text(&seg, n), "é".repeat(n as usize / 2));
    assert_eq!(slot.error_text(&seg, u32::MAX).len(), ERROR_CAPACITY, "a corrupt length is clamped");
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Head {
    a: u32,
    b: u32,
}

#[test]
fn frame_length_headers_and_replacement() {
    let seg = seg();
    let mut slot = {
        // SAFETY: a test segment of this test alone; each slot is minted once.
        unsafe { OwnedSlot::assigned(&seg, 1) }
    }
    .unwrap();
    let mut spare = {
        // SAFETY: a test segment of this test alone; each slot is minted once.
        unsafe { OwnedSlot::assigned(&seg, 0) }
    }
    .unwrap();
    slot.payload_mut(&seg)[..12].copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 9, 9, 9, 9]);
    let mut f = Frame::new(&seg, &mut slot, &mut spare, 12);
    assert_eq!(f.header::<Head>().unwrap(), &Head { a: 1, b: 2 });
    let (h, rest) = f.split::<Head>().unwrap();
    h.b = 3;
    assert_eq!(rest, &[9, 9, 9, 9]);
    assert_eq!(f.set_len(65), Err(FrameError::TooLarge { requested: 65, capacity: 64 }));
    f.set_len(4).unwrap();
    assert!(matches!(f.header::<Head>(), Err(FrameError::Header { needed: 8, len: 4 })));
    f.set_len(12).unwrap();
    // A failed replacement changes nothing.
    let err = f.replace(|_, _| Err::<usize, FrameError>(FrameError::Header { needed: 0, len: 0 }));
    assert!(err.is_err());
    assert_eq!(f.bytes()[4], 3);
    // A replacement longer than the frame is refused.
    assert!(f.replace(|_, _| Ok::<usize, FrameError>(65)).is_err());
    // A real replacement writes the spare and swaps.
    f.replace(|old, new| {
        new[..old.len()].copy_from_slice(old);
        new[old.len()..old.len() * 2].copy_from_slice(old);
        Ok::<usize, FrameError>(old.len() * 2)
    })
    .unwrap();
    assert_eq!(f.len(), 24);
    assert_eq!(&f.bytes()[12..16], &[1, 0, 0, 0]);
    assert_eq!((slot.index(), spare.index()), (0, 1), "the stage's spare is now the old slot");
}
