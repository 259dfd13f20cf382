//! A test fixture (cargo feature `test-fixtures`): writes a one-page PDF with one line of
//! text in Helvetica (lopdf's README example), or a broken one without a MediaBox, so tests
//! can chunk PDFs without checked-in binaries.
//!
//! For tests and benches only: nothing in myco's run-time code calls it.

use std::io;
use std::path::Path;

use lopdf::content::{Content, Operation};
use lopdf::{Document, Object, Stream, dictionary};

/// A one-page PDF at `path` whose text layer is `text`.
pub fn write_pdf(path: &Path, text: &str) -> io::Result<()> {
    write_pdf_with(path, text, true)
}

/// Like [`write_pdf`]; without a MediaBox (`media_box: false`) the PDF is broken in a way
/// that makes pdf-extract 0.12 panic.
pub fn write_pdf_with(path: &Path, text: &str, media_box: bool) -> io::Result<()> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let content = Content {
        operations: vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 24.into()]),
            Operation::new("Td", vec![72.into(), 700.into()]),
            Operation::new("Tj", vec![Object::string_literal(text)]),
            Operation::new("ET", vec![]),
        ],
    };
    let encoded = content.encode().map_err(io::Error::other)?;
    let content_id = doc.add_object(Stream::new(dictionary! {}, encoded));
    let page_id = doc.add_object(dictionary! {
        "Type" => "Page",
        "Parent" => pages_id,
        "Contents" => content_id,
    });
    let mut pages = dictionary! {
        "Type" => "Pages",
        "Kids" => vec![page_id.into()],
        "Count" => 1,
        "Resources" => resources_id,
    };
    if media_box {
        pages.set("MediaBox", vec![0.into(), 0.into(), 595.into(), 842.into()]);
    }
    doc.objects.insert(pages_id, Object::Dictionary(pages));
    let catalog_id = doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    doc.trailer.set("Root", catalog_id);
    doc.compress();
    doc.save(path)?;
    Ok(())
}
