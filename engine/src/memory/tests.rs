use std::os::fd::AsFd;

use super::*;

fn small() -> Layout {
    Layout::compute(3, 8, 256, 16).unwrap()
}

#[test]
fn layout_validates_its_own_header() {
    let l = small();
    assert_eq!(Layout::validate(l.header(), l.size() as u64), Ok(l));
}

#[test]
fn layout_rejects_out_of_range_counts() {
    assert!(matches!(Layout::compute(0, 8, 64, 0), Err(LayoutError::OutOfRange { .. })));
    assert!(matches!(Layout::compute(MAX_STAGES + 1, 8, 64, 0), Err(LayoutError::OutOfRange { .. })));
    assert!(matches!(Layout::compute(1, 0, 64, 0), Err(LayoutError::OutOfRange { .. })));
    assert!(matches!(Layout::compute(1, MAX_SLOTS + 1, 64, 0), Err(LayoutError::OutOfRange { .. })));
    assert!(matches!(Layout::compute(1, 1, MAX_FRAME_CAPACITY + 1, 0), Err(LayoutError::OutOfRange { .. })));
    assert!(Layout::compute(MAX_STAGES, MAX_SLOTS, 0, 0).is_ok());
}

#[test]
fn layout_rejects_tampered_headers() {
    let l = small();
    let mut h = *l.header();
    h.magic[0] ^= 1;
    assert_eq!(Layout::validate(&h, l.size() as u64), Err(LayoutError::BadMagic));
    let mut h = *l.header();
    h.version += 1;
    assert!(matches!(Layout::validate(&h, l.size() as u64), Err(LayoutError::VersionMismatch { .. })));
    let mut h = *l.header();
    h.slots_offset += 128;
    assert!(matches!(Layout::validate(&h, l.size() as u64), Err(LayoutError::Inconsistent(_))));
    let mut h = *l.header();
    h.slot_count = u32::MAX;
    assert!(Layout::validate(&h, l.size() as u64).is_err());
    assert!(Layout::validate(l.header(), l.size() as u64 + 4096).is_err());
}

/// Any bytes at all fed to header validation give Ok or a typed error, never a panic.
#[test]
fn header_validation_survives_arbitrary_bytes() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let rounds = if cfg!(miri) { 50 } else { 20_000 };
    for round in 0..rounds {
        let mut h = *small().header();
        let words: &mut [u32] = bytemuck::cast_slice_mut(std::slice::from_mut(&mut h));
        for _ in 0..(round % 5) + 1 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % words.len();
            words[i] = (x >> 32) as u32;
        }
        let _ = Layout::validate(&h, x % (1 << 40));
    }
}

#[cfg(not(miri))] // memfd and mmap are syscalls Miri does not model
mod segment {
    use super::*;

    #[test]
    fn created_segment_reopens_and_is_sealed() {
        let seg = Segment::create(small()).unwrap();
        let fd = seg.fd().try_clone_to_owned().unwrap();
        let again = Segment::open(fd).unwrap();
        assert_eq!(again.layout(), seg.layout());
        // A shrink attempt fails: the seal protects every mapper from SIGBUS.
        let err = rustix::fs::ftruncate(seg.fd(), 0).unwrap_err();
        assert_eq!(err, rustix::io::Errno::PERM);
        let grow = rustix::fs::ftruncate(seg.fd(), seg.layout().size() as u64 * 2).unwrap_err();
        assert_eq!(grow, rustix::io::Errno::PERM);
    }

    #[test]
    fn state_broken_is_final() {
        let seg = Segment::create(small()).unwrap();
        assert_eq!(seg.control().state(), STATE_RUNNING);
        seg.control().set_state(STATE_BROKEN);
        seg.control().set_state(STATE_SHUTDOWN);
        assert_eq!(seg.control().state(), STATE_BROKEN);
    }

    #[test]
    fn unsealed_or_foreign_memfd_is_refused() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(Segment::open(fd), Err(SegmentError::NotSealed)));
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW)
            .unwrap();
        let e = Segment::open(fd).unwrap_err();
        assert!(matches!(e, SegmentError::Layout(LayoutError::BadMagic)), "{e}");
    }

    #[test]
    fn stage_records_are_bounds_checked() {
        let seg = Segment::create(small()).unwrap();
        seg.write_blob(&[0; 16]);
        seg.write_stage(
            0,
            StageRecord {
                name_offset: 10,
                name_len: 10,
                input_ring: 0,
                output_ring: 1,
                ..Default::default()
            },
        );
        assert!(seg.stage(0).is_err(), "name runs past the blob");
        seg.write_stage(1, StageRecord { name_len: 4, input_ring: 1, output_ring: 9, ..Default::default() });
        assert!(seg.stage(1).is_err(), "ring out of range");
        seg.write_stage(2, StageRecord { name_len: 4, input_ring: 2, output_ring: 3, ..Default::default() });
        let good = StageRecord { name_len: 4, input_ring: 2, output_ring: 3, ..Default::default() };
        assert!(seg.stage(2).is_ok());
        let rings = small().ring_count() as u32;
        for bad in [
            StageRecord { input_count: 0, ..good },
            StageRecord { output_count: 0, ..good },
            StageRecord { input_count: 2, input_stride: 0, ..good },
            StageRecord { input_count: 2, input_stride: rings, ..good },
            StageRecord { output_count: rings, ..good },
            StageRecord { wake_ring: rings - 1, output_count: 2, ..good },
            StageRecord { input_count: 65, input_stride: 1, ..good },
            StageRecord { stage: 256, ..good },
            StageRecord { flags: 4, ..good },
        ] {
            seg.write_stage(2, bad);
            assert!(seg.stage(2).is_err(), "{bad:?}");
        }
        assert!(seg.stage(3).is_err());
        let _ = seg.fd().as_fd();
    }

    #[test]
    fn impossible_size_is_a_typed_error() {
        let l = Layout::compute(1, 1024, MAX_FRAME_CAPACITY, 0).unwrap(); // 1 TiB
        match Segment::create(l) {
            Err(SegmentError::NoMemory { requested, .. }) => assert_eq!(requested, l.size() as u64),
            other => panic!("expected NoMemory, got {other:?}"),
        }
    }
}
