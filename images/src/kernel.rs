//! Turning Debian's compressed `vmlinuz` (a bzImage) into the ELF `vmlinux`
//! that QEMU boots through PVH.
//!
//! Why bother: under TCG, a bzImage spends seconds decompressing itself
//! inside the emulated CPU; a PVH `vmlinux` is loaded by QEMU directly and
//! reaches userspace about 2.5x sooner. Debian ships only the bzImage, but it
//! carries the ELF verbatim: the boot header (x86 boot protocol >= 2.08) says
//! where the compressed payload sits, the payload's magic says how it was
//! compressed, and the kernel build appends the decompressed size as a
//! little-endian u32 (gzip's own trailer holds the same), which doubles as an
//! integrity check.

use std::io::Read;

use goblin::elf::{Elf, header, program_header, section_header};

/// The note name and type that mark a PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY).
const PVH_NOTE_NAME: &str = "Xen";
const PVH_NOTE_TYPE: u32 = 18;

/// Boot header offsets from Documentation/x86/boot.rst.
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const BOOT_PROTOCOL: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

/// The largest block of the legacy LZ4 format the kernel uses (`lz4 -l`).
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// A vmlinux ready for PVH boot.
#[derive(Debug)]
pub(crate) struct Vmlinux {
    pub(crate) elf: Vec<u8>,
    pub(crate) pvh_entry: u64,
    pub(crate) compression: Compression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Xz,
    Lz4,
    Zstd,
}

/// Why a kernel could not be turned into a PVH vmlinux; the caller adds the
/// file name when it turns this into an [`crate::ImageError`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KernelError {
    NotBzImage(String),
    Unsupported(&'static str),
    Decompress(String),
    BadElf(String),
    NoPvhNote,
}

/// Extracts, checks and trims the vmlinux inside a bzImage.
pub(crate) fn extract_vmlinux(bzimage: &[u8]) -> Result<Vmlinux, KernelError> {
    let payload = payload(bzimage)?;
    let compression = detect(payload)?;
    let mut elf = decompress(compression, payload)?;
    let pvh_entry = pvh_entry(&elf)?.ok_or(KernelError::NoPvhNote)?;
    // The decompressor's relocation table follows the ELF; a PVH boot never
    // uses it, so the image does not carry it.
    let end = elf_extent(&elf)?;
    elf.truncate(end);
    Ok(Vmlinux {
        elf,
        pvh_entry,
        compression,
    })
}

/// The compressed payload of a bzImage, located through its boot header.
pub(crate) fn payload(bzimage: &[u8]) -> Result<&[u8], KernelError> {
    let not = |why: &str| KernelError::NotBzImage(why.to_owned());
    let field = |at: usize, len: usize| -> Result<usize, KernelError> {
        let bytes = bzimage
            .get(at..at + len)
            .ok_or_else(|| not("truncated boot header"))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0, |value, &b| (value << 8) | usize::from(b)))
    };
    if bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err(not("no \"HdrS\" boot header at 0x202"));
    }
    let protocol = field(BOOT_PROTOCOL, 2)?;
    if protocol < 0x208 {
        return Err(not(&format!(
            "boot protocol {protocol:#x} predates payload fields (2.08)"
        )));
    }
    // A zero sector count means the historical default of four.
    let setup_sects = match field(SETUP_SECTS, 1)? {
        0 => 4,
        n => n,
    };
    let protected_mode_start = (setup_sects + 1) * 512;
    let start = protected_mode_start + field(PAYLOAD_OFFSET, 4)?;
    let len = field(PAYLOAD_LENGTH, 4)?;
    start
        .checked_add(len)
        .and_then(|end| bzimage.get(start..end))
        .filter(|p| p.len() > 4)
        .ok_or_else(|| not("payload offset/length point outside the file"))
}

/// Tells the compression of a payload by its magic bytes.
pub(crate) fn detect(payload: &[u8]) -> Result<Compression, KernelError> {
    let formats: [(&[u8], Result<Compression, &'static str>); 8] = [
        (&[0x1f, 0x8b], Ok(Compression::Gzip)),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Ok(Compression::Xz)),
        (&LZ4_LEGACY_MAGIC, Ok(Compression::Lz4)),
        (&[0x28, 0xb5, 0x2f, 0xfd], Ok(Compression::Zstd)),
        (b"BZh", Err("bzip2")),
        (&[0x5d, 0x00, 0x00], Err("lzma")),
        (&[0x89, b'L', b'Z', b'O'], Err("lzo")),
        (&[0x04, 0x22, 0x4d, 0x18], Err("lz4 frame format")),
    ];
    for (magic, format) in formats {
        if payload.starts_with(magic) {
            return format.map_err(KernelError::Unsupported);
        }
    }
    Err(KernelError::Unsupported("an unknown format"))
}

fn decompress(compression: Compression, payload: &[u8]) -> Result<Vec<u8>, KernelError> {
    let (stream, size) = payload.split_at(payload.len() - 4);
    let expected = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
    let failed = |e: std::io::Error| KernelError::Decompress(e.to_string());
    let mut out = Vec::with_capacity(expected);
    match compression {
        // gzip's trailer is part of its stream, so it reads the whole payload.
        Compression::Gzip => flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map_err(failed)?,
        Compression::Xz => liblzma::read::XzDecoder::new(stream)
            .read_to_end(&mut out)
            .map_err(failed)?,
        Compression::Zstd => zstd::stream::read::Decoder::new(stream)
            .map_err(failed)?
            .single_frame()
            .read_to_end(&mut out)
            .map_err(failed)?,
        Compression::Lz4 => {
            lz4_legacy(stream, &mut out)?;
            out.len()
        }
    };
    if out.len() != expected {
        return Err(KernelError::Decompress(format!(
            "got {} bytes, the size trailer says {expected}",
            out.len()
        )));
    }
    Ok(out)
}

/// The legacy LZ4 container (`lz4 -l`): a magic, then blocks each prefixed
/// with its compressed length. Concatenated streams repeat the magic.
/// lz4_flex reads blocks but not this container, which is all there is to it.
fn lz4_legacy(mut input: &[u8], out: &mut Vec<u8>) -> Result<(), KernelError> {
    let corrupt = |why: String| KernelError::Decompress(format!("lz4: {why}"));
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while !input.is_empty() {
        let (word, rest) = input
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated block header".into()))?;
        input = rest;
        if *word == LZ4_LEGACY_MAGIC {
            continue;
        }
        let len = u32::from_le_bytes(*word) as usize;
        let compressed = input
            .get(..len)
            .ok_or_else(|| corrupt(format!("block of {len} bytes runs past the end")))?;
        input = &input[len..];
        let n = lz4_flex::block::decompress_into(compressed, &mut block)
            .map_err(|e| corrupt(e.to_string()))?;
        out.extend_from_slice(&block[..n]);
    }
    Ok(())
}

/// The physical entry address from the ELF's PVH note, if it has one.
pub(crate) fn pvh_entry(elf_bytes: &[u8]) -> Result<Option<u64>, KernelError> {
    let elf = parse_x86_64(elf_bytes)?;
    let Some(notes) = elf.iter_note_headers(elf_bytes) else {
        return Ok(None);
    };
    for note in notes {
        let note = note.map_err(|e| KernelError::BadElf(format!("bad note: {e}")))?;
        if note.n_type == PVH_NOTE_TYPE && note.name == PVH_NOTE_NAME {
            // The descriptor is a 32-bit address in practice; accept 64 too.
            let entry = match note.desc.len() {
                4 => u64::from(u32::from_le_bytes(note.desc.try_into().expect("4"))),
                8 => u64::from_le_bytes(note.desc.try_into().expect("8")),
                n => {
                    return Err(KernelError::BadElf(format!(
                        "PVH note descriptor of {n} bytes"
                    )));
                }
            };
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

fn parse_x86_64(bytes: &[u8]) -> Result<Elf<'_>, KernelError> {
    let elf = Elf::parse(bytes).map_err(|e| KernelError::BadElf(e.to_string()))?;
    if !elf.is_64 || elf.header.e_machine != header::EM_X86_64 {
        return Err(KernelError::BadElf("not an x86-64 ELF".into()));
    }
    Ok(elf)
}

/// Where the ELF file proper ends: past its last header table, segment or
/// section with file contents.
fn elf_extent(bytes: &[u8]) -> Result<usize, KernelError> {
    let elf = parse_x86_64(bytes)?;
    let h = &elf.header;
    let mut end = u64::from(h.e_ehsize)
        .max(h.e_phoff + u64::from(h.e_phnum) * u64::from(h.e_phentsize))
        .max(h.e_shoff + u64::from(h.e_shnum) * u64::from(h.e_shentsize));
    for ph in &elf.program_headers {
        if ph.p_type != program_header::PT_NULL {
            end = end.max(ph.p_offset + ph.p_filesz);
        }
    }
    for sh in &elf.section_headers {
        if sh.sh_type != section_header::SHT_NOBITS {
            end = end.max(sh.sh_offset + sh.sh_size);
        }
    }
    usize::try_from(end)
        .ok()
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| KernelError::BadElf(format!("headers claim {end} bytes")))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// A minimal x86-64 ELF: header, one PT_NOTE program header and, when
    /// asked, a `Xen` note of type 18 pointing at `entry`.
    pub(crate) fn tiny_elf(pvh: Option<u32>) -> Vec<u8> {
        let mut note = Vec::new();
        let (n_type, desc) = match pvh {
            Some(entry) => (PVH_NOTE_TYPE, entry.to_le_bytes()),
            None => (1, 0u32.to_le_bytes()),
        };
        let name = if pvh.is_some() { b"Xen\0" } else { b"GNU\0" };
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&n_type.to_le_bytes());
        note.extend_from_slice(name);
        note.extend_from_slice(&desc);

        let phoff = 64u64;
        let note_off = phoff + 56;
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF");
        elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, v1, SysV
        elf.extend_from_slice(&[0; 8]);
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&header::EM_X86_64.to_le_bytes());
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
        elf.extend_from_slice(&phoff.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
        elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(elf.len(), 64);
        elf.extend_from_slice(&program_header::PT_NOTE.to_le_bytes());
        elf.extend_from_slice(&4u32.to_le_bytes()); // p_flags
        elf.extend_from_slice(&note_off.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes()); // p_vaddr
        elf.extend_from_slice(&0u64.to_le_bytes()); // p_paddr
        elf.extend_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend_from_slice(&4u64.to_le_bytes()); // p_align
        elf.extend_from_slice(&note);
        elf
    }

    /// Wraps a payload in a bzImage with two setup sectors and protocol 2.15.
    fn tiny_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 2u8;
        let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        image[SETUP_SECTS] = setup_sects;
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[BOOT_PROTOCOL..BOOT_PROTOCOL + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        // The real decompressor stub sits between the setup code and the payload.
        let stub = vec![0x90u8; 100];
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4]
            .copy_from_slice(&(stub.len() as u32).to_le_bytes());
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&stub);
        image.extend_from_slice(payload);
        image.extend_from_slice(b"trailing setup data");
        image
    }

    fn with_size_trailer(mut stream: Vec<u8>, size: usize) -> Vec<u8> {
        stream.extend_from_slice(&(size as u32).to_le_bytes());
        stream
    }

    /// What the kernel build compresses: the ELF followed by relocations.
    fn vmlinux_bin() -> (Vec<u8>, Vec<u8>) {
        let elf = tiny_elf(Some(0x0100_0abc));
        let mut all = elf.clone();
        all.extend_from_slice(&[0xee; 64]);
        (elf, all)
    }

    #[test]
    fn gzip_payload_is_found_and_trimmed() {
        let (elf, all) = vmlinux_bin();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&all).unwrap();
        let vmlinux = extract_vmlinux(&tiny_bzimage(&gz.finish().unwrap())).unwrap();
        assert_eq!(vmlinux.compression, Compression::Gzip);
        assert_eq!(vmlinux.pvh_entry, 0x0100_0abc);
        assert_eq!(vmlinux.elf, elf);
    }

    #[test]
    fn xz_payload_is_decompressed() {
        let (elf, all) = vmlinux_bin();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&all).unwrap();
        let payload = with_size_trailer(xz.finish().unwrap(), all.len());
        let vmlinux = extract_vmlinux(&tiny_bzimage(&payload)).unwrap();
        assert_eq!(vmlinux.compression, Compression::Xz);
        assert_eq!(vmlinux.elf, elf);
    }

    #[test]
    fn zstd_payload_is_decompressed() {
        let (elf, all) = vmlinux_bin();
        let payload = with_size_trailer(zstd::encode_all(&all[..], 3).unwrap(), all.len());
        let vmlinux = extract_vmlinux(&tiny_bzimage(&payload)).unwrap();
        assert_eq!(vmlinux.compression, Compression::Zstd);
        assert_eq!(vmlinux.elf, elf);
    }

    #[test]
    fn lz4_legacy_payload_with_several_blocks_is_decompressed() {
        let (elf, all) = vmlinux_bin();
        let (first, second) = all.split_at(100);
        let mut stream = LZ4_LEGACY_MAGIC.to_vec();
        for block in [first, second] {
            let compressed = lz4_flex::block::compress(block);
            stream.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            stream.extend_from_slice(&compressed);
        }
        let payload = with_size_trailer(stream, all.len());
        let vmlinux = extract_vmlinux(&tiny_bzimage(&payload)).unwrap();
        assert_eq!(vmlinux.compression, Compression::Lz4);
        assert_eq!(vmlinux.elf, elf);
    }

    #[test]
    fn wrong_size_trailer_is_caught() {
        let (_, all) = vmlinux_bin();
        let payload = with_size_trailer(zstd::encode_all(&all[..], 3).unwrap(), all.len() + 1);
        let err = extract_vmlinux(&tiny_bzimage(&payload)).unwrap_err();
        assert!(matches!(err, KernelError::Decompress(ref why) if why.contains("size trailer")));
    }

    #[test]
    fn unsupported_and_non_bzimage_inputs_are_named() {
        assert_eq!(
            extract_vmlinux(&tiny_bzimage(b"BZh91AY&SY....")).unwrap_err(),
            KernelError::Unsupported("bzip2")
        );
        assert!(matches!(
            extract_vmlinux(&tiny_elf(None)).unwrap_err(),
            KernelError::NotBzImage(_)
        ));
    }

    #[test]
    fn pvh_note_is_detected_only_when_present() {
        assert_eq!(pvh_entry(&tiny_elf(Some(0x1234))).unwrap(), Some(0x1234));
        assert_eq!(pvh_entry(&tiny_elf(None)).unwrap(), None);

        let payload = with_size_trailer(
            zstd::encode_all(&tiny_elf(None)[..], 3).unwrap(),
            tiny_elf(None).len(),
        );
        assert_eq!(
            extract_vmlinux(&tiny_bzimage(&payload)).unwrap_err(),
            KernelError::NoPvhNote
        );
    }
}
