//! Fresh host buffers for loaded weights. Loading a checkpoint copies gigabytes into new memory,
//! and on VMs most of that time is the kernel faulting in 4 KiB pages one by one; asking for
//! transparent huge pages (`MADV_HUGEPAGE`, honoured when THP is `always` or `madvise`) makes that
//! 512× fewer faults. Elsewhere the hint is a no-op.

use half::{bf16, f16};

/// Element types whose every bit pattern is a valid value (so bytes can be copied in).
pub trait PlainData: Copy + Send + Sync + 'static {}
impl PlainData for f16 {}
impl PlainData for bf16 {}
impl PlainData for f32 {}
impl PlainData for f64 {}

/// The elements stored little-endian in `bytes` (any alignment) as a new vector whose pages are
/// hinted huge. `None` when the byte count is not a whole number of elements.
pub fn vec_from_bytes<T: PlainData>(bytes: &[u8]) -> Option<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if size == 0 || bytes.len() % size != 0 || cfg!(target_endian = "big") {
        return None;
    }
    let n = bytes.len() / size;
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge(v.as_mut_ptr().cast::<u8>(), n * size);
    // SAFETY: the vector owns capacity for `n` elements = `bytes.len()` bytes; the copy writes all
    // of them (byte-wise, so the source alignment does not matter), and `T: PlainData` makes every
    // bit pattern a valid element, so the first `n` elements are initialised.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
        v.set_len(n);
    }
    Some(v)
}

/// Reads the `len` bytes at `offset` of `file` into a new vector of `T` whose pages are hinted
/// huge: `pread` straight into the buffer, so the source side takes no page faults through a
/// mapping either. Large tensors are read in parallel slices, so the kernel's zeroing of the
/// fresh pages (most of a load's time) runs on every core. `Ok(None)` when `len` is not a whole
/// number of elements.
#[cfg(target_os = "linux")]
pub fn read_vec<T: PlainData>(
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> std::io::Result<Option<Vec<T>>> {
    use rayon::prelude::*;
    /// Bytes per parallel read (a multiple of the 2 MiB huge page).
    const SLICE: usize = 8 << 20;
    let size = std::mem::size_of::<T>();
    if size == 0 || len % size != 0 || cfg!(target_endian = "big") {
        return Ok(None);
    }
    let n = len / size;
    let mut v = with_capacity_huge::<T>(n);
    // The address travels to the reader threads as an integer; each writes a disjoint range.
    let buf = v.as_mut_ptr() as usize;
    (0..len.div_ceil(SLICE)).into_par_iter().try_for_each(|i| {
        let from = i * SLICE;
        let to = (from + SLICE).min(len);
        // SAFETY: `[from, to)` lies inside the vector's capacity of `len` bytes, and the
        // slices of different `i` are disjoint.
        unsafe { pread_exact(file, (buf + from) as *mut u8, to - from, offset, from) }
    })?;
    // SAFETY: the slices cover all `len` bytes, and every bit pattern is a valid `T: PlainData`.
    unsafe { v.set_len(n) };
    Ok(Some(v))
}

/// Reads exactly `len` bytes at file offset `offset + from` to `dst`.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes and not accessed by anyone else meanwhile.
#[cfg(target_os = "linux")]
unsafe fn pread_exact(
    file: &std::fs::File,
    dst: *mut u8,
    len: usize,
    offset: u64,
    from: usize,
) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < len {
        let at = offset
            .checked_add((from + done) as u64)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "file offset out of range"))?;
        // SAFETY: writes at most `len - done` bytes at `dst + done`, inside the caller's range.
        let r = unsafe { libc::pread(file.as_raw_fd(), dst.add(done).cast(), len - done, at) };
        match r {
            r if r > 0 => done += r as usize,
            0 => {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    "the file is shorter than its header says (changed on disk?)",
                ))
            }
            _ => {
                let e = Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// A vector of `n` elements whose capacity is hinted huge, to be filled by the caller.
pub fn with_capacity_huge<T>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge(v.as_mut_ptr().cast::<u8>(), n * std::mem::size_of::<T>());
    v
}

/// `MADV_HUGEPAGE` on the whole 2 MiB pages inside `[ptr, ptr + len)`.
#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize).saturating_add(len) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies inside one live allocation of ours; MADV_HUGEPAGE changes only how
        // the kernel backs the pages, never their contents. Failure (THP off) is ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_unaligned_little_endian_elements() {
        let values = [1.5f32, -2.25, 3.0e-8, f32::MAX];
        let mut bytes = vec![0u8]; // force an odd start address
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let got: Vec<f32> = vec_from_bytes(&bytes[1..]).unwrap();
        assert_eq!(got, values);
        let halves: Vec<f16> = vec_from_bytes(&f16::from_f32(0.5).to_le_bytes()).unwrap();
        assert_eq!(halves, [f16::from_f32(0.5)]);
        assert!(vec_from_bytes::<f32>(&bytes[..3]).is_none());
    }

    #[test]
    fn large_buffers_work_with_the_hint() {
        let bytes = vec![0x3cu8; 8 << 20];
        let v: Vec<f16> = vec_from_bytes(&bytes).unwrap();
        assert_eq!(v.len(), 4 << 20);
        assert!(v.iter().all(|x| x.to_bits() == 0x3c3c));
        let w: Vec<f32> = with_capacity_huge(1 << 20);
        assert!(w.capacity() >= 1 << 20 && w.is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_a_file_range_and_reports_short_files() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        let values: Vec<f32> = (0..(3 << 20)).map(|i| i as f32 * 0.5).collect();
        f.write_all(&[7u8; 3]).unwrap();
        for v in &values {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        let got: Vec<f32> = read_vec(&f, 3, values.len() * 4).unwrap().unwrap();
        assert_eq!(got, values);
        assert!(read_vec::<f32>(&f, 3, 6).unwrap().is_none());
        let e = read_vec::<f32>(&f, 3, values.len() * 4 + 4).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
