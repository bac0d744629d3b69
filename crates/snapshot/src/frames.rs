//! A seekable tar.zst: [`FrameWriter`] compresses the tar stream as a run of independent zstd frames, closing one
//! (and starting the next) when the packer asks at an entry boundary and the frame holds at least
//! [`FRAME_BYTES`]. The concatenation is still one valid `.tar.zst` (`zstd -d | tar -x` reads it); what it adds is
//! that decompression can start at any frame's first byte, which is where each entry's index record points
//! (`index`). One zstd context (with its worker threads) serves every frame: it is reset between frames, not
//! rebuilt.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};

/// Uncompressed bytes after which the next entry boundary closes the frame: what reading one file decompresses
/// before reaching it, at most.
pub(crate) const FRAME_BYTES: u64 = 16 << 20;
/// zstd's job size inside a frame, so the worker threads still share a frame's work (zstd's default for level 3
/// is 8 MiB, two jobs per frame).
const JOB_BYTES: i32 = 4 << 20;
/// Output buffer size (zstd's recommended `ZSTD_CStreamOutSize` is ~128 KiB).
const OUT_BUF: usize = 128 * 1024;

/// Where a frame starts: its first byte in the compressed archive and in the tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct FrameStart {
    pub compressed: u64,
    pub tar: u64,
}

/// A `Write` of tar bytes into `out` as independent zstd frames (checksummed, `workers` compression threads).
pub(crate) struct FrameWriter<W: Write> {
    enc: Encoder<'static>,
    out: W,
    buf: Vec<u8>,
    /// Tar bytes taken in all, and in the current frame.
    taken: u64,
    in_frame: u64,
    /// Compressed bytes handed to `out`.
    written: u64,
    frame: FrameStart,
    frames: u64,
}

impl<W: Write> FrameWriter<W> {
    pub(crate) fn new(out: W, level: i32, workers: u32) -> io::Result<Self> {
        let mut enc = Encoder::new(level)?;
        enc.set_parameter(CParameter::ChecksumFlag(true))?;
        if workers > 0 {
            enc.set_parameter(CParameter::NbWorkers(workers))?;
            enc.set_parameter(CParameter::JobSize(JOB_BYTES as u32))?;
        }
        Ok(Self {
            enc,
            out,
            buf: Vec::with_capacity(OUT_BUF),
            taken: 0,
            in_frame: 0,
            written: 0,
            frame: FrameStart::default(),
            frames: 1,
        })
    }

    /// The current frame's start and the tar offset of the next byte written. Call it at an entry boundary after
    /// [`FrameWriter::boundary`].
    pub(crate) fn position(&self) -> (FrameStart, u64) {
        (self.frame, self.taken)
    }

    /// An entry boundary: close the frame if it holds at least `min_bytes`.
    pub(crate) fn boundary(&mut self, min_bytes: u64) -> io::Result<()> {
        if self.in_frame < min_bytes || self.in_frame == 0 {
            return Ok(());
        }
        self.end_frame()?;
        self.enc.reinit()?;
        self.frame = FrameStart { compressed: self.written, tar: self.taken };
        self.in_frame = 0;
        self.frames += 1;
        Ok(())
    }

    fn end_frame(&mut self) -> io::Result<()> {
        loop {
            self.buf.clear();
            let mut out = OutBuffer::around(&mut self.buf);
            let left = self.enc.finish(&mut out, false)?;
            self.out.write_all(&self.buf)?;
            self.written += self.buf.len() as u64;
            if left == 0 {
                return Ok(());
            }
        }
    }

    /// Close the last frame; returns `out` and how many frames were written.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        self.end_frame()?;
        Ok((self.out, self.frames))
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut input = InBuffer::around(data);
        while input.pos < data.len() {
            self.buf.clear();
            let mut out = OutBuffer::around(&mut self.buf);
            self.enc.run(&mut input, &mut out)?;
            self.out.write_all(&self.buf)?;
            self.written += self.buf.len() as u64;
        }
        self.taken += data.len() as u64;
        self.in_frame += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn frames_are_independent_and_concatenate_to_the_input() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 ^ (i / 7000) as u8).collect();
        let mut w = FrameWriter::new(Vec::new(), 3, 0).unwrap();
        let mut starts = vec![w.position().0];
        for chunk in data.chunks(700_000) {
            w.boundary(1_000_000).unwrap();
            starts.push(w.position().0);
            w.write_all(chunk).unwrap();
        }
        let (out, frames) = w.finish().unwrap();
        starts.dedup();
        assert_eq!(frames, starts.len() as u64);
        assert!(frames >= 2, "{frames}");
        // The whole is one stream; each frame start decodes on its own to the end.
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        for s in &starts {
            let mut got = Vec::new();
            zstd::stream::read::Decoder::new(&out[s.compressed as usize..]).unwrap().read_to_end(&mut got).unwrap();
            assert_eq!(got, &data[s.tar as usize..]);
        }
    }
}
