//! The keyword index of a collection: BM25 over its chunks' text, through tantivy.
//!
//! Dense vectors find what a chunk is about; a sentence copied from a page is found better
//! by its words (a few rare words outweigh the rest of an 800-character chunk). The index
//! holds one document per chunk, its text tokenized by tantivy's `en_stem` analyzer (words
//! split at non-alphanumerics, lowercased, English-stemmed, words over 40 bytes dropped),
//! with the chunk's row number as a fast field; the text itself is not stored (it is in
//! `chunks.jsonl`). Written once with the collection, read-only after.
//!
//! This file must not know about vectors, the queue or any async runtime.

use std::path::Path;

use crate::filter::Allowed;

use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::{
    BooleanQuery, EnableScoring, Occur, PhraseQuery, Query, Scorer, TermQuery, Weight,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::TokenStream;
use tantivy::{
    DocAddress, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, SeekDangerResult,
    TantivyDocument, Term,
};

/// The analyzer chunk text and queries go through.
const ANALYZER: &str = "en_stem";
/// The indexing writer's memory: tantivy flushes a segment when it is used up, so this bounds
/// what building the index holds however big the collection.
const WRITER_BYTES: usize = 32 * 1024 * 1024;

/// The fewest best word matches a query's phrases are scored on (see [`KeywordIndex::search`]).
const PHRASE_POOL: usize = 100;

/// Adds to each hit's score what each of `phrases` scores on its chunk (nothing where the
/// phrase is not in it), as a boolean query of words and phrases would have summed them.
/// Each segment's hits are visited in document order, and a phrase is only tested on them
/// (tantivy's `seek_danger`: is this one document in the set?), never scanned for.
fn phrase_scores(
    searcher: &Searcher,
    phrases: &[Box<dyn Weight>],
    hits: &mut [(f32, DocAddress)],
) -> Result<(), String> {
    let docs: Vec<DocAddress> = hits.iter().map(|h| h.1).collect();
    let mut order: Vec<usize> = (0..hits.len()).collect();
    order.sort_by_key(|&i| docs[i]);
    for segment in order.chunk_by(|&a, &b| docs[a].segment_ord == docs[b].segment_ord) {
        let reader = searcher.segment_reader(docs[segment[0]].segment_ord);
        for weight in phrases {
            let mut scorer = weight.scorer(reader, 1.0).map_err(err)?;
            // `lower`: no document before it is in the set; `at`: the scorer stands on it.
            let mut lower = scorer.doc();
            let mut at = true;
            for &i in segment {
                let doc = docs[i].doc_id;
                if doc < lower {
                    continue;
                }
                let found = if at && doc == lower {
                    true
                } else {
                    match scorer.seek_danger(doc) {
                        SeekDangerResult::Found => {
                            (lower, at) = (doc, true);
                            true
                        }
                        SeekDangerResult::SeekLowerBound(next) => {
                            (lower, at) = (next, false);
                            false
                        }
                    }
                };
                if found {
                    hits[i].0 += scorer.score();
                }
            }
        }
    }
    Ok(())
}

/// An open keyword index.
pub struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    text: Field,
    context: Field,
}

impl std::fmt::Debug for KeywordIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeywordIndex").finish_non_exhaustive()
    }
}

/// One chunk to index: its row, text, and context (title and headings, joined).
#[derive(Debug)]
pub struct Entry<'a> {
    pub row: u64,
    pub text: &'a str,
    pub context: String,
}

fn schema() -> (Schema, [Field; 3]) {
    let mut b = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(ANALYZER)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let options = TextOptions::default().set_indexing_options(indexing);
    let text = b.add_text_field("text", options.clone());
    let context = b.add_text_field("context", options);
    let row = b.add_u64_field("row", INDEXED | FAST);
    (b.build(), [text, context, row])
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Builds an index of `entries` in `dir` (created; it must not hold an index yet), or in
/// memory when `dir` is `None`.
///
/// # Errors
///
/// tantivy's, as text (I/O, mostly).
pub fn build<'a>(
    dir: Option<&Path>,
    entries: impl IntoIterator<Item = Entry<'a>>,
) -> Result<KeywordIndex, String> {
    let (schema, [text, context, row]) = schema();
    let index = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Index::create_in_dir(dir, schema).map_err(err)?
        }
        None => Index::create_in_ram(schema),
    };
    // One thread: the chunks are small and the archive's own workers are busy.
    let mut writer: IndexWriter<TantivyDocument> = index
        .writer_with_num_threads(1, WRITER_BYTES)
        .map_err(err)?;
    for e in entries {
        let mut doc = TantivyDocument::default();
        doc.add_text(text, e.text);
        if !e.context.is_empty() {
            doc.add_text(context, &e.context);
        }
        doc.add_u64(row, e.row);
        writer.add_document(doc).map_err(err)?;
    }
    writer.commit().map_err(err)?;
    writer.wait_merging_threads().map_err(err)?;
    open_index(index)
}

/// Opens the index in `dir`.
///
/// # Errors
///
/// tantivy's, as text: a missing or damaged index.
pub fn open(dir: &Path) -> Result<KeywordIndex, String> {
    open_index(Index::open_in_dir(dir).map_err(err)?)
}

fn open_index(index: Index) -> Result<KeywordIndex, String> {
    let text = index.schema().get_field("text").map_err(err)?;
    let context = index.schema().get_field("context").map_err(err)?;
    // Manual: the index never changes once written (no file watcher thread).
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(err)?;
    Ok(KeywordIndex {
        index,
        reader,
        text,
        context,
    })
}

impl KeywordIndex {
    /// The query's words, through the same analyzer as the chunks, in order.
    fn words(&self, query: &str) -> Result<Vec<String>, String> {
        let mut analyzer = self.index.tokenizer_for_field(self.text).map_err(err)?;
        let mut stream = analyzer.token_stream(query);
        let mut words = Vec::new();
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        Ok(words)
    }

    /// The `k` chunks (row, BM25 score) that match `query`'s words best by BM25, best first. Any word may
    /// match, and neighbouring words that stand together in a chunk score again (as a
    /// phrase). No query syntax: the text is taken as words, so pasted code or punctuation
    /// cannot be a syntax error; none matching gives nothing.
    ///
    /// # Errors
    ///
    /// tantivy's, as text.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(usize, f32)>, String> {
        self.search_in(query, k, None)
    }

    /// [`KeywordIndex::search`] among the `allowed` rows only (every row when `None`): a
    /// chunk whose row is not allowed is never collected, so up to `k` allowed ones come back.
    ///
    /// # Errors
    ///
    /// tantivy's, as text.
    pub fn search_in(
        &self,
        query: &str,
        k: usize,
        allowed: Option<Allowed>,
    ) -> Result<Vec<(usize, f32)>, String> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let words = self.words(query)?;
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // Each word in either field; and each pair of neighbouring words as a phrase in the
        // text, so that a passage quoted from a chunk ranks that chunk above others that
        // merely share its words.
        let searcher = self.reader.searcher();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut seen: Vec<Term> = Vec::new();
        for w in &words {
            for field in [self.text, self.context] {
                let term = Term::from_field_text(field, w);
                // A term no chunk holds is left out: it scores nothing, and its empty scorer
                // would keep tantivy from pruning the union by block-max WAND (-25 %).
                if !seen.contains(&term) && searcher.doc_freq(&term).map_err(err)? > 0 {
                    seen.push(term.clone());
                    clauses.push((
                        Occur::Should,
                        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                    ));
                }
            }
        }
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        // First the words alone (tantivy prunes such a union by block-max WAND, so common
        // words cost little), a pool larger than `k`; then each pair of neighbouring words as
        // a phrase in the text, scored only on that pool. Scoring phrases over every chunk
        // that holds both words cost ~15 ms at 200k chunks. A chunk outside the pool is one
        // whose words alone score below 4k others; a passage quoted from a chunk has all its
        // words there, so that chunk is in the pool.
        let pool = k.saturating_mul(4).max(PHRASE_POOL);
        let words_query = BooleanQuery::new(clauses);
        let best = TopDocs::with_limit(pool).order_by_score();
        let mut top = match allowed {
            None => searcher.search(&words_query, &best),
            Some(a) => {
                let keep = move |row: u64| {
                    usize::try_from(row).is_ok_and(|r| a.get(r).copied().unwrap_or(false))
                };
                searcher.search(
                    &words_query,
                    &FilterCollector::new("row".into(), keep, best),
                )
            }
        }
        .map_err(err)?;
        let mut phrases: Vec<Box<dyn Weight>> = Vec::new();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for pair in words.windows(2) {
            let p = (pair[0].as_str(), pair[1].as_str());
            if !pairs.contains(&p) {
                pairs.push(p);
                let terms = vec![
                    Term::from_field_text(self.text, p.0),
                    Term::from_field_text(self.text, p.1),
                ];
                phrases.push(
                    PhraseQuery::new(terms)
                        .weight(EnableScoring::enabled_from_searcher(&searcher))
                        .map_err(err)?,
                );
            }
        }
        if !phrases.is_empty() {
            phrase_scores(&searcher, &phrases, &mut top)?;
            top.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        }
        top.truncate(k);
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let rows = searcher
                .segment_reader(addr.segment_ord)
                .fast_fields()
                .u64("row")
                .map_err(err)?;
            if let Some(row) = rows.first(addr.doc_id) {
                out.push((usize::try_from(row).unwrap_or(usize::MAX), score));
            }
        }
        Ok(out)
    }

    /// How many chunks it holds.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXTS: &[&str] = &[
        "The queue leases each job to one worker at a time.",
        "Workers steal batches from busy peers when they run dry.",
        "A lease that expires puts its job back in the queue.",
        "Embeddings are L2-normalised, so a dot product is the cosine.",
    ];

    fn rows() -> impl Iterator<Item = Entry<'static>> {
        TEXTS.iter().enumerate().map(|(i, t)| Entry {
            row: i as u64 * 10,
            text: t,
            context: String::new(),
        })
    }

    #[test]
    fn finds_rows_by_their_words_stemmed_and_ranks_rarer_words_higher() {
        let ix = build(None, rows()).unwrap();
        assert_eq!(ix.len(), 4);
        let hits = ix.search("stealing batches", 4).unwrap();
        assert_eq!(hits[0].0, 10, "{hits:?}");
        // "queue" is in two rows, "expires" in one: the row with both wins.
        let hits = ix.search("the lease expired; queue", 4).unwrap();
        assert_eq!(hits[0].0, 20, "{hits:?}");
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    #[test]
    fn query_syntax_is_just_words_and_no_match_is_empty() {
        let ix = build(None, rows()).unwrap();
        assert!(ix.search("\"unbalanced (AND OR: -+", 3).unwrap().is_empty());
        assert!(ix.search("", 3).unwrap().is_empty());
        assert!(ix.search("zebra", 3).unwrap().is_empty());
        assert_eq!(ix.search("cosine: dot(a, b)", 3).unwrap()[0].0, 30);
    }

    /// The two passes (words, then phrases on the pool) score exactly as one boolean query
    /// of words and phrases over every chunk would, on an index of several segments.
    #[test]
    fn phrases_scored_on_the_pool_equal_one_query_over_everything() {
        const WORDS: &[&str] = &["queue", "lease", "worker", "batch", "node", "model", "page"];
        let (schema, [text, context, row]) = schema();
        let index = Index::create_in_ram(schema);
        let mut writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, 15_000_000).unwrap();
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for i in 0..600u64 {
            let words: Vec<&str> = (0..8).map(|_| WORDS[next() % WORDS.len()]).collect();
            let mut doc = TantivyDocument::default();
            doc.add_text(text, words.join(" "));
            doc.add_u64(row, i);
            writer.add_document(doc).unwrap();
            if i % 200 == 199 {
                writer.commit().unwrap();
            }
        }
        let ix = open_index(index).unwrap();
        assert!(ix.reader.searcher().segment_readers().len() >= 2);
        let searcher = ix.reader.searcher();
        for q in [
            "queue lease worker",
            "batch node batch model",
            "page queue",
            "model",
        ] {
            // The reference: every word in both fields and every pair as a phrase, at once.
            let words = ix.words(q).unwrap();
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for w in &words {
                for field in [text, context] {
                    let t = Term::from_field_text(field, w);
                    clauses.push((
                        Occur::Should,
                        Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)),
                    ));
                }
            }
            let mut pairs = Vec::new();
            for p in words.windows(2) {
                if !pairs.contains(&p) {
                    pairs.push(p);
                    let terms = p.iter().map(|w| Term::from_field_text(text, w)).collect();
                    clauses.push((Occur::Should, Box::new(PhraseQuery::new(terms))));
                }
            }
            let mut seen = Vec::new();
            clauses.retain(|(_, c)| {
                let key = format!("{c:?}");
                let new = !seen.contains(&key);
                seen.push(key);
                new
            });
            let all = searcher
                .search(
                    &BooleanQuery::new(clauses),
                    &TopDocs::with_limit(600).order_by_score(),
                )
                .unwrap();
            let rows: Vec<(usize, f32)> = all
                .iter()
                .map(|(score, addr)| {
                    let rows = searcher.segment_reader(addr.segment_ord).fast_fields();
                    let row = rows.u64("row").unwrap().first(addr.doc_id).unwrap();
                    (row as usize, *score)
                })
                .collect();
            let close = |a: &[(usize, f32)], b: &[(usize, f32)]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.1 - y.1).abs() < 1e-4)
            };
            // A pool of every chunk (k = 150: 600): the same list.
            assert!(close(&ix.search(q, 150).unwrap(), &rows[..150]), "{q}");
            // A smaller pool: each hit scores what it scores in the reference, best first.
            let got = ix.search(q, 10).unwrap();
            assert_eq!(got.len(), 10);
            for (row, score) in &got {
                let want = rows.iter().find(|r| r.0 == *row).unwrap().1;
                assert!((score - want).abs() < 1e-4, "{q}: {got:?}");
            }
            assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));
        }
    }

    #[test]
    fn the_title_and_headings_are_searched_too() {
        let entries = rows().map(|mut e| {
            if e.row == 30 {
                e.context = "Vectors > Normalisation".into();
            }
            e
        });
        let ix = build(None, entries).unwrap();
        assert_eq!(ix.search("normalisation", 4).unwrap()[0].0, 30);
    }

    #[test]
    fn written_to_disk_and_opened_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keyword");
        build(Some(&dir), rows()).unwrap();
        let ix = open(&dir).unwrap();
        assert_eq!(ix.search("one worker at a time", 1).unwrap()[0].0, 0);
        assert!(open(&tmp.path().join("missing")).is_err());
    }
}
