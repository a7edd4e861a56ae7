using System.Text;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class BertTextTokenizerTests
{
    private const long Cls = 101, Sep = 102, Pad = 0, Unk = 100, Hello = 7592, World = 2088;

    private static BertTextTokenizer tokenizer = null!;

    [ClassInitialize]
    public static void LoadVocabulary(TestContext context)
    {
        using var vocab = TestData.MiniLmVocab();
        tokenizer = BertTextTokenizer.FromVocab(vocab);
    }

    private static long[] Row(string text, int maxLength = 512) => tokenizer.Encode([text], null, maxLength).InputIds;

    private static readonly System.Text.Json.JsonSerializerOptions JsonOptions = new() { PropertyNameCaseInsensitive = true };

    private sealed record ReferenceCase(string Text, string? Pair, int MaxLength, long[] Ids, long[] TypeIds);

    [TestMethod]
    public void Encode_ReferenceCases_EqualHuggingFaceTokenizers()
    {
        // Ids from Hugging Face tokenizers 0.23.2 (BertTokenizerFast's engine) with MiniLM's tokenizer settings, made by
        // Reference/make_tokenizer_reference.js: the MiniLM test sentences, awkward text (controls, symbols, emoji,
        // scripts, accents, special tokens inside text, very long words and texts) and longest-first truncated pairs.
        string json = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Reference", "tokenizer_reference.json"));
        var cases = System.Text.Json.JsonSerializer.Deserialize<List<ReferenceCase>>(json, JsonOptions)!;
        Assert.IsTrue(cases.Count >= 70);
        var failures = new List<string>();
        foreach (var c in cases)
        {
            var batch = tokenizer.Encode([c.Text], c.Pair is null ? null : [c.Pair], c.MaxLength);
            if (!batch.InputIds.SequenceEqual(c.Ids) || !batch.TokenTypeIds.SequenceEqual(c.TypeIds))
            {
                failures.Add($"'{c.Text[..Math.Min(60, c.Text.Length)]}' / '{c.Pair?[..Math.Min(20, c.Pair.Length)]}' ({c.MaxLength}): expected [{string.Join(", ", c.Ids.Take(30))}] got [{string.Join(", ", batch.InputIds.Take(30))}]");
            }
        }

        Assert.AreEqual(0, failures.Count, string.Join("\n", failures));
    }

    [TestMethod]
    public void Encode_SingleText_ClsTextSep_WithUncasedCrlfVocab()
    {
        var batch = tokenizer.Encode(["Hello World"], null, 16);
        Assert.AreEqual(1, batch.BatchSize);
        Assert.AreEqual(4, batch.SequenceLength);
        CollectionAssert.AreEqual(new[] { Cls, Hello, World, Sep }, batch.InputIds);
        CollectionAssert.AreEqual(new long[] { 1, 1, 1, 1 }, batch.AttentionMask);
        CollectionAssert.AreEqual(new long[] { 0, 0, 0, 0 }, batch.TokenTypeIds);
        Assert.AreEqual(0, tokenizer.PadTokenId);
        Assert.AreEqual(100, tokenizer.UnknownTokenId);
    }

    [TestMethod]
    public void Encode_Pair_SegmentsHaveTokenTypes()
    {
        var batch = tokenizer.Encode(["hello"], ["world"], 16);
        CollectionAssert.AreEqual(new[] { Cls, Hello, Sep, World, Sep }, batch.InputIds);
        CollectionAssert.AreEqual(new long[] { 0, 0, 0, 1, 1 }, batch.TokenTypeIds);
        CollectionAssert.AreEqual(new long[] { 1, 1, 1, 1, 1 }, batch.AttentionMask);
    }

    [TestMethod]
    public void Encode_Batch_PadsDynamicallyToLongestRow()
    {
        var batch = tokenizer.Encode(["hello world", "hello", "world hello world"], null, 64);
        Assert.AreEqual(5, batch.SequenceLength);
        CollectionAssert.AreEqual(
            new[] { Cls, Hello, World, Sep, Pad, Cls, Hello, Sep, Pad, Pad, Cls, World, Hello, World, Sep },
            batch.InputIds);
        CollectionAssert.AreEqual(new long[] { 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1 }, batch.AttentionMask);
        var (ids, mask, types) = batch.ToTensors();
        using (ids)
        using (mask)
        using (types)
        {
            CollectionAssert.AreEqual(new long[] { 3, 5 }, ids.shape);
            Assert.AreEqual(ScalarType.Int64, mask.dtype);
            CollectionAssert.AreEqual(batch.TokenTypeIds, types.data<long>().ToArray());
        }
    }

    [TestMethod]
    public void Encode_LongSingleText_TruncatesToMaxLength()
    {
        var batch = tokenizer.Encode(["hello world hello world hello"], null, 4);
        CollectionAssert.AreEqual(new[] { Cls, Hello, World, Sep }, batch.InputIds);
    }

    [TestMethod]
    [DataRow(10, 10, 5, 2, 3)]
    [DataRow(2, 10, 5, 2, 3)]
    [DataRow(10, 2, 5, 3, 2)]
    [DataRow(3, 2, 5, 3, 2)]
    [DataRow(1, 10, 6, 1, 5)]
    [DataRow(10, 1, 6, 5, 1)]
    [DataRow(5, 3, 7, 4, 3)]
    [DataRow(4, 4, 7, 3, 4)]
    [DataRow(0, 9, 4, 0, 4)]
    public void LongestFirst_MatchesHuggingFaceFastTokenizer(int first, int second, int budget, int expectedFirst, int expectedSecond)
    {
        Assert.AreEqual((expectedFirst, expectedSecond), BertTextTokenizer.LongestFirst(first, second, budget));
    }

    [TestMethod]
    public void Encode_LongPair_TruncatesLongestFirst()
    {
        // 6 + 2 word pieces, budget 8 - 3 = 5: the longer first text loses pieces until 3 + 2.
        var batch = tokenizer.Encode(["hello world hello world hello world"], ["world hello"], 8);
        CollectionAssert.AreEqual(new[] { Cls, Hello, World, Hello, Sep, World, Hello, Sep }, batch.InputIds);
        CollectionAssert.AreEqual(new long[] { 0, 0, 0, 0, 0, 1, 1, 1 }, batch.TokenTypeIds);
    }

    [TestMethod]
    [DataRow("")]
    [DataRow("   ")]
    [DataRow("\t\r\n \u00a0")]
    public void Encode_EmptyOrWhitespace_GivesClsSep(string text)
    {
        CollectionAssert.AreEqual(new[] { Cls, Sep }, Row(text));
        CollectionAssert.AreEqual(new[] { Cls, Sep, Hello, Sep }, tokenizer.Encode([text], ["hello"], 16).InputIds);
    }

    [TestMethod]
    public void Encode_ControlCharacters_AreRemoved_WhitespaceSeparates()
    {
        // Hugging Face BasicTokenizer: Cc/Cf characters, NUL and U+FFFD are deleted (joining their neighbours);
        // tab, CR, LF and other space separators split words.
        CollectionAssert.AreEqual(Row("hello world"), Row("hello\u0007 world\u0000"));
        CollectionAssert.AreEqual(Row("helloworld"), Row("hello\u0000world"));
        CollectionAssert.AreEqual(Row("helloworld"), Row("hello\u200bworld\ufffd"));
        CollectionAssert.AreEqual(Row("hello world"), Row("hello\tworld\r\n"));
        CollectionAssert.AreEqual(new[] { Cls, Hello, World, Hello, Sep }, Row("hello\nworld\u2003hello"));
    }

    [TestMethod]
    public void Encode_AsciiSymbols_AreTokensOfTheirOwn()
    {
        // "$", "5", "+", "3" in the bert-base-uncased vocabulary (the library's own basic step would drop "$" and "+").
        CollectionAssert.AreEqual(new[] { Cls, 1002L, 1019, 1009, 1017, Sep }, Row("$5+3"));
    }

    [TestMethod]
    public void Encode_NonBmpCharacters_AreWholeUnknownTokens()
    {
        CollectionAssert.AreEqual(new[] { Cls, Unk, Sep }, Row("😀"));
        var plain = Row("i love pizza");
        var withEmoji = Row("I love 😀 pizza");
        CollectionAssert.AreEqual(plain[..3].Concat([Unk]).Concat(plain[3..]).ToArray(), withEmoji);

        // A word the vocabulary cannot spell is one [UNK] (as Hugging Face), also with non-BMP letters.
        CollectionAssert.AreEqual(new[] { Cls, Unk, Row("you")[1], Sep }, Row("love😀 you"));
        CollectionAssert.AreEqual(new[] { Cls, Hello, Unk, Sep }, Row("hello 𝐰𝐨𝐫𝐥𝐝"));

        // CJK ideographs outside the BMP are single-character words, each [UNK] here.
        CollectionAssert.AreEqual(new[] { Cls, Unk, Unk, Sep }, Row("\U00020000\U00020001"));
    }

    [TestMethod]
    public void Encode_LoneSurrogate_IsRemoved()
    {
        CollectionAssert.AreEqual(new[] { Cls, Hello, World, Sep }, Row("hello \ud83d world\udc00"));
    }

    [TestMethod]
    public void Encode_VeryLongText_TruncatesAndEqualsPrefixOfFullTokenization()
    {
        var words = new[] { "the", "tokenizer", "handles", "unbelievably", "long", "inputs", "gracefully", "." };
        var text = new StringBuilder();
        for (int i = 0; i < 100_000; i++)
        {
            text.Append(words[i % words.Length]).Append(' ');
        }

        var full = tokenizer.Tokenize(string.Join(' ', Enumerable.Range(0, 400).Select(i => words[i % words.Length])));
        var batch = tokenizer.Encode([text.ToString()], null, 128);
        Assert.AreEqual(128, batch.SequenceLength);
        CollectionAssert.AreEqual(full.Take(126).Select(i => (long)i).ToArray(), batch.InputIds[1..127]);
        Assert.AreEqual(Sep, batch.InputIds[127]);
    }

    [TestMethod]
    public void Encode_WordLongerThan100Characters_IsOneUnknownToken()
    {
        CollectionAssert.AreEqual(new[] { Cls, Hello, Unk, World, Sep }, Row("hello " + new string('a', 150) + " world"));
    }

    [TestMethod]
    public void FromVocab_CaseAndAccentOptions_AreApplied()
    {
        CollectionAssert.AreEqual(new[] { Cls, Hello, Sep }, Row("HÉLLO"));
        using var vocab = TestData.MiniLmVocab();
        var keepAccents = BertTextTokenizer.FromVocab(vocab, lowerCase: true, stripAccents: false);
        Assert.IsFalse(keepAccents.StripAccents);
        CollectionAssert.AreNotEqual(new[] { Cls, Hello, Sep }, keepAccents.Encode(["héllo"], null, 16).InputIds);
        using var vocab2 = TestData.MiniLmVocab();
        var cased = BertTextTokenizer.FromVocab(vocab2, lowerCase: false, stripAccents: false);
        Assert.IsFalse(cased.LowerCase);
        CollectionAssert.AreNotEqual(new[] { Cls, Hello, Sep }, cased.Encode(["HELLO"], null, 16).InputIds);
    }

    [TestMethod]
    public void Encode_BadArguments_ThrowNamingTheParameter()
    {
        Assert.AreEqual("texts", Assert.ThrowsExactly<ArgumentException>(() => tokenizer.Encode([], null, 8)).ParamName);
        Assert.AreEqual("texts", Assert.ThrowsExactly<ArgumentException>(() => tokenizer.Encode(["a", null!], null, 8)).ParamName);
        Assert.AreEqual("pairs", Assert.ThrowsExactly<ArgumentException>(() => tokenizer.Encode(["a", "b"], ["c"], 8)).ParamName);
        Assert.AreEqual("maxLength", Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => tokenizer.Encode(["a"], ["b"], 2)).ParamName);
        Assert.AreEqual("maxLength", Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => tokenizer.Encode(["a"], null, 1)).ParamName);
    }

    [TestMethod]
    public void FromVocab_MissingSpecialTokens_ThrowsListingThem()
    {
        using var vocab = new MemoryStream(Encoding.UTF8.GetBytes("[PAD]\n[UNK]\nhello\n"));
        var e = Assert.ThrowsExactly<ArgumentException>(() => BertTextTokenizer.FromVocab(vocab));
        StringAssert.Contains(e.Message, "[CLS]");
        StringAssert.Contains(e.Message, "[SEP]");
        Assert.AreEqual("vocab", e.ParamName);
    }
}
