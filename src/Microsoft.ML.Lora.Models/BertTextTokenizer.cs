using System.Globalization;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// WordPiece tokenizer for BERT models (Microsoft.ML.Tokenizers' <see cref="BertTokenizer"/> over a <c>vocab.txt</c>),
/// producing padded batches of <c>[CLS] a [SEP]</c> or <c>[CLS] a [SEP] b [SEP]</c> rows.
/// </summary>
/// <remarks>
/// Text is prepared with Hugging Face's BERT normalizer and pre-tokenizer rules (the library's own basic step drops
/// symbols and new lines), then split into WordPiece tokens by the library; the result equals Hugging Face
/// tokenizers' (BertTokenizerFast) ids, truncation included, on a tested reference set. Special tokens such as
/// <c>[SEP]</c> are recognised anywhere in the text. Defined behaviour on awkward text (tested): empty or
/// whitespace-only text gives no word pieces (the row is <c>[CLS] [SEP]</c>); control and format characters (Cc, Cf),
/// NUL, U+FFFD and unpaired surrogates are removed; tab, CR and LF separate words; ASCII symbols and punctuation
/// are tokens of their own; a character outside the Basic Multilingual Plane (e.g. an emoji) is never split into
/// surrogate halves, and a word the vocabulary cannot spell (e.g. "love😀") becomes one <c>[UNK]</c>, as does a
/// word longer than 100 characters; text longer than <c>maxLength</c> tokens is truncated by a
/// <see cref="TruncationStrategy"/> (its head by default) after the whole text is tokenized.
/// <para>This file and those it uses (BasicTokenizer.cs, EncodedBatch.cs, EncodedRow.cs, TextTokens.cs,
/// TokenTruncation.cs, TruncationStrategy.cs) have no TorchSharp dependency: the ONNX
/// scoring package compiles the same files (as internal types), so both packages tokenize with one implementation.</para>
/// </remarks>
#if MICROSOFT_ML_LORA_ONNX
internal
#else
public
#endif
sealed class BertTextTokenizer
{
    private static readonly string[] RequiredTokens = ["[CLS]", "[SEP]", "[PAD]", "[UNK]"];

    private readonly BertTokenizer tokenizer;
    private readonly BasicTokenizer basic;
    private readonly string vocabularyText;
    private long tokenizedTexts;

    private BertTextTokenizer(BertTokenizer tokenizer, string vocabularyText, bool lowerCase, bool stripAccents)
    {
        this.tokenizer = tokenizer;
        basic = new BasicTokenizer(lowerCase, stripAccents, ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"]);
        this.vocabularyText = vocabularyText;
        LowerCase = lowerCase;
        StripAccents = stripAccents;
    }

    /// <summary>Whether text is lower-cased before WordPiece (uncased models).</summary>
    public bool LowerCase { get; }

    /// <summary>Whether accents (non-spacing marks after NFD) are removed before WordPiece.</summary>
    public bool StripAccents { get; }

    /// <summary>Id of [PAD].</summary>
    public int PadTokenId => tokenizer.PaddingTokenId;

    /// <summary>Id of [CLS].</summary>
    public int ClsTokenId => tokenizer.ClassificationTokenId;

    /// <summary>Id of [SEP].</summary>
    public int SepTokenId => tokenizer.SeparatorTokenId;

    /// <summary>Id of [UNK].</summary>
    public int UnknownTokenId => tokenizer.UnknownTokenId;

    /// <summary>The vocabulary text (one token per line, '\n' line ends), as written to vocab.txt on export.</summary>
    internal string VocabularyText => vocabularyText;

    /// <summary>Creates the tokenizer from a <c>vocab.txt</c> stream (UTF-8, one token per line; CRLF or LF).</summary>
    /// <param name="vocab">The vocabulary; read to its end, not disposed.</param>
    /// <param name="lowerCase">Lower-case text first (uncased models). Default true.</param>
    /// <param name="stripAccents">Remove accents (non-spacing marks). Default true.</param>
    /// <returns>The tokenizer.</returns>
    /// <exception cref="ArgumentException">The vocabulary is empty or lacks [CLS], [SEP], [PAD] or [UNK].</exception>
    public static BertTextTokenizer FromVocab(Stream vocab, bool lowerCase = true, bool stripAccents = true)
    {
        ArgumentNullException.ThrowIfNull(vocab);
        using var reader = new StreamReader(vocab, Encoding.UTF8, detectEncodingFromByteOrderMarks: true, leaveOpen: true);
        string text = reader.ReadToEnd().Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');
        var lines = text.Split('\n').ToList();
        while (lines.Count > 0 && lines[^1].Length == 0)
        {
            lines.RemoveAt(lines.Count - 1);
        }

        if (lines.Count == 0)
        {
            throw new ArgumentException("The vocabulary is empty; expected one WordPiece token per line.", nameof(vocab));
        }

        var present = new HashSet<string>(lines, StringComparer.Ordinal);
        var absent = RequiredTokens.Where(t => !present.Contains(t)).ToList();
        if (absent.Count > 0)
        {
            throw new ArgumentException($"The vocabulary lacks the special token(s) {string.Join(", ", absent)}.", nameof(vocab));
        }

        string normalized = string.Join('\n', lines) + "\n";
        // Cleaning, lower-casing, accents and punctuation are done by BasicTokenizer (Hugging Face's rules); the
        // library then splits the prepared words on spaces and applies WordPiece and the special tokens.
        var options = new BertOptions
        {
            LowerCaseBeforeTokenization = false,
            RemoveNonSpacingMarks = false,
            ApplyBasicTokenization = false,
            SplitOnSpecialTokens = true,
        };
        using var stream = new MemoryStream(Encoding.UTF8.GetBytes(normalized));
        var tokenizer = BertTokenizer.Create(stream, options);
        return new BertTextTokenizer(tokenizer, normalized, lowerCase, stripAccents);
    }

    /// <summary>Creates the tokenizer from a <c>vocab.txt</c> file.</summary>
    /// <param name="path">Path of vocab.txt.</param>
    /// <param name="lowerCase">Lower-case text first (uncased models). Default true.</param>
    /// <param name="stripAccents">Remove accents. Default true.</param>
    /// <returns>The tokenizer.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public static BertTextTokenizer FromVocabFile(string path, bool lowerCase = true, bool stripAccents = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Vocabulary file '{path}' does not exist.", path);
        }

        using var stream = File.OpenRead(path);
        try
        {
            return FromVocab(stream, lowerCase, stripAccents);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"'{path}': {e.Message}", nameof(path), e);
        }
    }

    /// <summary>
    /// Texts tokenized by this instance so far (each call of <see cref="Tokenize"/>; a row with a pair counts two), so that
    /// tests can see that a row is tokenized once.
    /// </summary>
    internal long TokenizedTexts => Interlocked.Read(ref tokenizedTexts);

    /// <summary>Word-piece ids of one text, without special tokens and without truncation.</summary>
    /// <param name="text">The text.</param>
    /// <returns>The ids.</returns>
    public IReadOnlyList<int> Tokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        Interlocked.Increment(ref tokenizedTexts);
        return WordPiece(basic.Words(text));
    }

    /// <summary>Tokenizes a row's text (and pair) whole: the word pieces before special tokens and truncation.</summary>
    /// <param name="text">The first text.</param>
    /// <param name="pair">The second text, or null for a single text.</param>
    internal TextTokens TokenizeRow(string text, string? pair)
    {
        ArgumentNullException.ThrowIfNull(text);
        return new TextTokens(Tokenize(text), pair is null ? null : Tokenize(pair));
    }

    /// <summary>
    /// Tokenizes a batch: rows <c>[CLS] text [SEP]</c>, or <c>[CLS] text [SEP] pair [SEP]</c> when
    /// <paramref name="pairs"/> is given, truncated to <paramref name="maxLength"/> tokens (their head) and padded with
    /// [PAD] to the longest row of the batch (dynamic padding).
    /// </summary>
    /// <param name="texts">The first texts; at least one; no null entries.</param>
    /// <param name="pairs">Optional second texts, as many as <paramref name="texts"/>; no null entries.</param>
    /// <param name="maxLength">Most tokens per row, special tokens included (at least 2, or 3 with pairs).</param>
    /// <returns>The batch.</returns>
    /// <remarks>
    /// Pairs are truncated longest-first as Hugging Face's fast tokenizers do: with budget
    /// <c>m = maxLength - 3</c>, the shorter text keeps up to its length (but at least m/2 is left to the longer), and
    /// when both exceed half, the first gets floor(m/2) and the second ceil(m/2) (or the reverse if the first was longer).
    /// </remarks>
    /// <exception cref="ArgumentException">A text is null, the list is empty, or the pair count differs.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxLength"/> is too small.</exception>
    public EncodedBatch Encode(IReadOnlyList<string> texts, IReadOnlyList<string>? pairs, int maxLength) =>
        Encode(texts, pairs, maxLength, TruncationStrategy.Head);

    /// <summary>
    /// Tokenizes a batch as <see cref="Encode(IReadOnlyList{string}, IReadOnlyList{string}?, int)"/> does, keeping the
    /// tokens of a long text that <paramref name="truncation"/> chooses.
    /// </summary>
    /// <param name="texts">The first texts; at least one; no null entries.</param>
    /// <param name="pairs">Optional second texts, as many as <paramref name="texts"/>; no null entries.</param>
    /// <param name="maxLength">Most tokens per row, special tokens included (at least 2, or 3 with pairs).</param>
    /// <param name="truncation">Which tokens a text longer than the budget keeps; with pairs, each text keeps its
    /// longest-first share by this strategy.</param>
    /// <returns>The batch.</returns>
    /// <exception cref="ArgumentException">A text is null, the list is empty, or the pair count differs.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxLength"/> is too small, or the strategy is unknown.</exception>
    public EncodedBatch Encode(IReadOnlyList<string> texts, IReadOnlyList<string>? pairs, int maxLength, TruncationStrategy truncation)
    {
        CheckBatch(texts, pairs, maxLength, truncation);
        var rows = new EncodedRow[texts.Count];
        for (int i = 0; i < texts.Count; i++)
        {
            string text = texts[i] ?? throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"texts[{i}] is null."), nameof(texts));
            rows[i] = EncodeRow(text, pairs?[i], maxLength, truncation);
        }

        return Pad(rows);
    }

    /// <summary>
    /// Tokenizes one row: <c>[CLS] text [SEP]</c> or <c>[CLS] text [SEP] pair [SEP]</c>, truncated to
    /// <paramref name="maxLength"/> tokens by <paramref name="truncation"/>, not padded.
    /// </summary>
    /// <param name="text">The first text.</param>
    /// <param name="pair">The second text, or null for a single text.</param>
    /// <param name="maxLength">Most tokens, special tokens included.</param>
    /// <param name="truncation">Which tokens a long text keeps.</param>
    internal EncodedRow EncodeRow(string text, string? pair, int maxLength, TruncationStrategy truncation) =>
        EncodeRow(TokenizeRow(text, pair), maxLength, truncation);

    /// <summary>
    /// Assembles a tokenized row: <c>[CLS] text [SEP]</c> or <c>[CLS] text [SEP] pair [SEP]</c>, truncated to
    /// <paramref name="maxLength"/> tokens by <paramref name="truncation"/> (pairs longest-first), not padded.
    /// </summary>
    /// <param name="tokens">The row's word pieces (<see cref="TokenizeRow"/>).</param>
    /// <param name="maxLength">Most tokens, special tokens included.</param>
    /// <param name="truncation">Which tokens a long text keeps.</param>
    internal EncodedRow EncodeRow(TextTokens tokens, int maxLength, TruncationStrategy truncation)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        var first = tokens.Text;
        var second = tokens.Pair;
        int specials = second is null ? 2 : 3;
        int budget = maxLength - specials;
        if (second is null)
        {
            return Assemble(TokenTruncation.Keep(first, budget, truncation), null, first.Count, specials);
        }

        var (n1, n2) = LongestFirst(first.Count, second.Count, budget);
        return Assemble(TokenTruncation.Keep(first, n1, truncation), TokenTruncation.Keep(second, n2, truncation), first.Count + second.Count, specials);
    }

    /// <summary>
    /// Tokenizes single texts into sliding windows: a text of at most <c>maxLength - 2</c> word pieces is one row; a longer
    /// one becomes windows of <c>maxLength - 2</c> word pieces (each <c>[CLS] … [SEP]</c>) at the starts
    /// <see cref="TokenTruncation.WindowStarts"/> gives for <paramref name="stride"/>, so no token is cut.
    /// </summary>
    /// <param name="texts">The texts; at least one; no null entries.</param>
    /// <param name="maxLength">Tokens per window, special tokens included.</param>
    /// <param name="stride">Word pieces between the starts of consecutive windows (1 to maxLength - 2).</param>
    /// <returns>The padded windows, and for each window the index of its text.</returns>
    internal (EncodedBatch Batch, int[] SourceRow) EncodeWindows(IReadOnlyList<string> texts, int maxLength, int stride)
    {
        var (rows, source) = WindowRows(texts, maxLength, stride);
        return (Pad(rows), source);
    }

    /// <summary>The windows of <see cref="EncodeWindows"/>, not padded.</summary>
    internal (List<EncodedRow> Rows, int[] SourceRow) WindowRows(IReadOnlyList<string> texts, int maxLength, int stride)
    {
        CheckBatch(texts, null, maxLength, TruncationStrategy.Head);
        var tokens = new TextTokens[texts.Count];
        for (int i = 0; i < texts.Count; i++)
        {
            string text = texts[i] ?? throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"texts[{i}] is null."), nameof(texts));
            tokens[i] = TokenizeRow(text, null);
        }

        return WindowRows(tokens, maxLength, stride);
    }

    /// <summary>The windows of tokenized single texts (<see cref="TokenizeRow"/> without a pair), as <see cref="EncodeWindows"/> cuts them, not padded.</summary>
    /// <param name="texts">The tokenized texts; at least one; none with a pair.</param>
    /// <param name="maxLength">Tokens per window, special tokens included.</param>
    /// <param name="stride">Word pieces between the starts of consecutive windows (1 to maxLength - 2).</param>
    /// <returns>The windows, and for each window the index of its text.</returns>
    internal (List<EncodedRow> Rows, int[] SourceRow) WindowRows(IReadOnlyList<TextTokens> texts, int maxLength, int stride)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (texts.Count == 0)
        {
            throw new ArgumentException("At least one text is required.", nameof(texts));
        }

        if (maxLength < 2)
        {
            throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "maxLength must be at least 2 (room for the special tokens).");
        }

        int budget = maxLength - 2;
        if (stride < 1 || stride > budget)
        {
            throw new ArgumentOutOfRangeException(nameof(stride), stride,
                string.Create(CultureInfo.InvariantCulture, $"stride must be from 1 to maxLength - 2 ({budget}) word pieces."));
        }

        var rows = new List<EncodedRow>(texts.Count);
        var source = new List<int>(texts.Count);
        for (int i = 0; i < texts.Count; i++)
        {
            if (texts[i].Pair is not null)
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"texts[{i}] has a pair; sliding windows take single texts."), nameof(texts));
            }

            var ids = texts[i].Text;
            foreach (int start in TokenTruncation.WindowStarts(ids.Count, budget, stride))
            {
                var window = new List<int>(budget);
                for (int j = start; j < Math.Min(ids.Count, start + budget); j++)
                {
                    window.Add(ids[j]);
                }

                // Every token of the text is in some window: a window is never counted as truncated.
                rows.Add(Assemble(window, null, window.Count, 2));
                source.Add(i);
            }
        }

        return (rows, [.. source]);
    }

    /// <summary>Pads rows with [PAD] to the longest of them: ids, attention mask and token types, row-major.</summary>
    /// <param name="rows">At least one row.</param>
    /// <returns>The batch, with the truncation counts of its rows.</returns>
    internal EncodedBatch Pad(IReadOnlyList<EncodedRow> rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        if (rows.Count == 0)
        {
            throw new ArgumentException("At least one row is required.", nameof(rows));
        }

        int length = 0;
        int truncated = 0;
        long sourceTokens = 0, keptTokens = 0;
        foreach (var row in rows)
        {
            length = Math.Max(length, row.Ids.Length);
            truncated += row.Truncated ? 1 : 0;
            sourceTokens += row.SourceTokens;
            keptTokens += row.KeptTokens;
        }

        var ids = new long[rows.Count * length];
        var mask = new long[rows.Count * length];
        var types = new long[rows.Count * length];
        Array.Fill(ids, PadTokenId);
        for (int r = 0; r < rows.Count; r++)
        {
            int offset = r * length;
            var row = rows[r];
            for (int p = 0; p < row.Ids.Length; p++)
            {
                ids[offset + p] = row.Ids[p];
                mask[offset + p] = 1;
                types[offset + p] = p < row.FirstSegmentLength ? 0 : 1;
            }
        }

        return new EncodedBatch(rows.Count, length, ids, mask, types)
        {
            TruncatedRows = truncated,
            SourceTokens = sourceTokens,
            KeptTokens = keptTokens,
        };
    }

    private static void CheckBatch(IReadOnlyList<string> texts, IReadOnlyList<string>? pairs, int maxLength, TruncationStrategy truncation)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (texts.Count == 0)
        {
            throw new ArgumentException("At least one text is required.", nameof(texts));
        }

        if (pairs is not null && pairs.Count != texts.Count)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"pairs has {pairs.Count} entries but texts has {texts.Count}; they must be equal."),
                nameof(pairs));
        }

        int specials = pairs is null ? 2 : 3;
        if (maxLength < specials)
        {
            throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, $"maxLength must be at least {specials} (room for the special tokens).");
        }

        if (!Enum.IsDefined(truncation))
        {
            throw new ArgumentOutOfRangeException(nameof(truncation), truncation, "Unknown truncation strategy; expected Head or HeadTail.");
        }

        if (pairs is not null)
        {
            for (int i = 0; i < pairs.Count; i++)
            {
                if (pairs[i] is null)
                {
                    throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"pairs[{i}] is null."), nameof(pairs));
                }
            }
        }
    }

    private EncodedRow Assemble(List<int> first, List<int>? second, int sourceTokens, int specials)
    {
        var ids = new int[first.Count + (second?.Count ?? 0) + specials];
        int p = 0;
        ids[p++] = ClsTokenId;
        foreach (int id in first)
        {
            ids[p++] = id;
        }

        ids[p++] = SepTokenId;
        int firstSegment = p;
        if (second is not null)
        {
            foreach (int id in second)
            {
                ids[p++] = id;
            }

            ids[p++] = SepTokenId;
        }

        return new EncodedRow(ids, firstSegment, sourceTokens, specials);
    }

    /// <summary>Hugging Face tokenizers' longest-first lengths for a pair under a budget.</summary>
    internal static (int First, int Second) LongestFirst(int first, int second, int budget)
    {
        if (first + second <= budget)
        {
            return (first, second);
        }

        bool swap = first > second;
        int n1 = swap ? second : first;
        int n2 = swap ? first : second;
        n2 = n1 > budget ? n1 : Math.Max(n1, budget - n1);
        if (n1 + n2 > budget)
        {
            n1 = budget / 2;
            n2 = n1 + (budget % 2);
        }

        return swap ? (n2, n1) : (n1, n2);
    }

    private IReadOnlyList<int> WordPiece(IEnumerable<string> words)
    {
        string prepared = string.Join(' ', words);
        return prepared.Length == 0
            ? []
            : tokenizer.EncodeToIds(prepared, addSpecialTokens: false, considerPreTokenization: true, considerNormalization: true);
    }
}
