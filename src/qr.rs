//! QR codes as SVG for the terminal handover: the buyer scans the short pay URL with a phone.
//!
//! The encoding is the `qrcode` crate's (no image dependencies, only its SVG renderer);
//! this module only fixes the choices poptill makes: error correction level M (about 15 %
//! of the symbol may be damaged or glared), a 4-module quiet zone as the standard asks,
//! black on white, and at least 256 px so a terminal screen shows it large enough.

use crate::error::ApiError;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use std::fmt;

/// The smallest width and height of the SVG, in px (the module size is a whole number of px).
pub const MIN_SIZE_PX: u32 = 256;

/// Why no QR code could be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QrError {
    /// The text does not fit in the largest QR code (about 2,300 bytes at level M).
    TooLong { bytes: usize },
}

impl fmt::Display for QrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QrError::TooLong { bytes } => write!(
                f,
                "The text ({bytes} bytes) is too long for a QR code; use a shorter URL."
            ),
        }
    }
}

impl std::error::Error for QrError {}

impl QrError {
    pub fn to_api(&self) -> ApiError {
        match self {
            QrError::TooLong { .. } => ApiError::new(422, "qr_text_too_long", self.to_string()),
        }
    }
}

impl From<QrError> for ApiError {
    fn from(e: QrError) -> Self {
        e.to_api()
    }
}

/// Encodes `text` (a pay URL such as `https://edge.example/p/hs_…`) as an SVG document
/// (`image/svg+xml`). Pure and deterministic: the same text gives the same bytes.
pub fn qr_svg(text: &str) -> Result<String, QrError> {
    let code = encode(text)?;
    Ok(code
        .render::<svg::Color<'_>>()
        .quiet_zone(true)
        .min_dimensions(MIN_SIZE_PX, MIN_SIZE_PX)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

fn encode(text: &str) -> Result<QrCode, QrError> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|_| QrError::TooLong { bytes: text.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcode::Color;

    const QUIET: usize = 4;

    /// Reads the square size from `viewBox="0 0 W H"`.
    fn view_box_size(svg: &str) -> u32 {
        let start = svg.find("viewBox=\"0 0 ").unwrap() + "viewBox=\"0 0 ".len();
        let rest = &svg[start..];
        let end = rest.find('"').unwrap();
        let dims: Vec<u32> = rest[..end].split(' ').map(|n| n.parse().unwrap()).collect();
        assert_eq!(dims.len(), 2);
        assert_eq!(dims[0], dims[1], "a QR code is square");
        dims[0]
    }

    /// Paints the path's rectangles (`M{x} {y}h{w}v{h}H{x}V{y}`) back into a module grid.
    fn modules_from_svg(svg: &str, modules: usize) -> Vec<bool> {
        let size = view_box_size(svg) as usize;
        let total = modules + 2 * QUIET;
        assert_eq!(size % total, 0, "whole pixels per module");
        let px = size / total;
        let d_start = svg.find(" d=\"").unwrap() + 4;
        let d = &svg[d_start..d_start + svg[d_start..].find('"').unwrap()];
        let mut grid = vec![false; modules * modules];
        for rect in d.split('M').filter(|s| !s.is_empty()) {
            let nums: Vec<usize> = rect
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|n| n.parse().unwrap())
                .collect();
            let (x, y, w, h) = (nums[0], nums[1], nums[2], nums[3]);
            assert!(x % px == 0 && y % px == 0 && w % px == 0 && h % px == 0);
            for row in y / px..(y + h) / px {
                for col in x / px..(x + w) / px {
                    assert!(row >= QUIET && col >= QUIET, "the quiet zone stays light");
                    let (r, c) = (row - QUIET, col - QUIET);
                    assert!(
                        r < modules && c < modules,
                        "no dark module outside the symbol"
                    );
                    grid[r * modules + c] = true;
                }
            }
        }
        grid
    }

    #[test]
    fn svg_is_a_square_document_with_quiet_zone_and_minimum_size() {
        let svg = qr_svg("https://edge.example/p/hs_4f9a2c").unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("fill=\"#ffffff\"") && svg.contains("fill=\"#000000\""));
        assert!(view_box_size(&svg) >= MIN_SIZE_PX);
    }

    #[test]
    fn the_drawn_modules_are_exactly_the_encoded_symbol() {
        for text in [
            "https://edge.example/p/hs_1",
            "HELLO",
            "https://a.b/p/hs_0123456789abcdef0123456789abcdef",
        ] {
            let code = encode(text).unwrap();
            let expected: Vec<bool> = code.to_colors().iter().map(|c| *c == Color::Dark).collect();
            let drawn = modules_from_svg(&qr_svg(text).unwrap(), code.width());
            assert_eq!(drawn, expected, "{text}");
            // Every QR code has three 7x7 finder patterns: the top-left corner is dark.
            assert!(drawn[0] && drawn[6] && drawn[6 * code.width()]);
        }
    }

    #[test]
    fn different_texts_give_different_codes_and_the_same_text_the_same() {
        let a = qr_svg("https://edge.example/p/hs_aaaa").unwrap();
        let b = qr_svg("https://edge.example/p/hs_aaab").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, qr_svg("https://edge.example/p/hs_aaaa").unwrap());
    }

    #[test]
    fn longer_texts_need_larger_versions() {
        let short = encode("https://e.x/p/1").unwrap();
        let long = encode(&format!("https://edge.example/p/{}", "x".repeat(300))).unwrap();
        // Version n has 17 + 4n modules a side.
        assert_eq!(short.width(), 25, "a short URL fits version 2 at level M");
        assert!(long.width() > short.width());
        assert_eq!((long.width() - 17) % 4, 0);
    }

    #[test]
    fn text_too_long_is_a_clear_error_not_a_panic() {
        let err = qr_svg(&"x".repeat(5000)).unwrap_err();
        assert_eq!(err, QrError::TooLong { bytes: 5000 });
        let api = err.to_api();
        assert_eq!((api.status, api.code.as_ref()), (422, "qr_text_too_long"));
        assert!(!api.message.contains("xxxx"), "the text is not echoed");
    }
}
