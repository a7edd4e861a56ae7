namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>Head+tail truncation, sliding windows and the truncation counts, at the tokenizer (exact ids).</summary>
[TestClass]
public sealed class TruncationTests
{
    private const long Cls = 101, Sep = 102, Pad = 0, Hello = 7592, World = 2088;

    // "a b c ... z": MiniLM's (bert-base-uncased) vocabulary has the single letters at consecutive ids, a = 1037.
    private const long A = 1037;
    private static readonly string Alphabet = string.Join(' ', Enumerable.Range(0, 26).Select(i => (char)('a' + i)));

    private static BertTextTokenizer tokenizer = null!;

    [ClassInitialize]
    public static void LoadVocabulary(TestContext context)
    {
        using var vocab = TestData.MiniLmVocab();
        tokenizer = BertTextTokenizer.FromVocab(vocab);
    }

    private static long[] Letters(params char[] letters) => letters.Select(c => A + (c - 'a')).ToArray();

    private static long[] Row(params long[][] parts) => parts.SelectMany(p => p).ToArray();

    [TestMethod]
    public void Alphabet_IsTwentySixConsecutiveIds()
    {
        CollectionAssert.AreEqual(Enumerable.Range(0, 26).Select(i => (int)A + i).ToArray(), tokenizer.Tokenize(Alphabet).ToArray());
    }

    [TestMethod]
    [DataRow(510, 128)]
    [DataRow(126, 32)]
    [DataRow(62, 16)]
    [DataRow(10, 3)]
    [DataRow(1, 0)]
    public void HeadTailHead_ScalesThePapers128Of510(int budget, int head)
    {
        Assert.AreEqual(head, TokenTruncation.HeadTailHead(budget));
    }

    [TestMethod]
    public void Encode_HeadTail_KeepsRoundedHeadShareAndTheEnd()
    {
        // Budget 12 - 2 = 10: head round(10 × 128 / 510) = 3 (a b c), tail 7 (t ... z).
        var batch = tokenizer.Encode([Alphabet], null, 12, TruncationStrategy.HeadTail);
        CollectionAssert.AreEqual(Row([Cls], Letters('a', 'b', 'c', 't', 'u', 'v', 'w', 'x', 'y', 'z'), [Sep]), batch.InputIds);
        Assert.AreEqual(1, batch.TruncatedRows);
        Assert.AreEqual(26, batch.SourceTokens);
        Assert.AreEqual(10, batch.KeptTokens);
    }

    [TestMethod]
    public void Encode_Head_KeepsTheFirstTokens_AndCountsTheCut()
    {
        var batch = tokenizer.Encode([Alphabet, "hello world"], null, 12, TruncationStrategy.Head);
        CollectionAssert.AreEqual(
            Row([Cls], Letters('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'), [Sep], [Cls, Hello, World, Sep], Enumerable.Repeat(Pad, 8).ToArray()),
            batch.InputIds);
        Assert.AreEqual(1, batch.TruncatedRows);
        Assert.AreEqual(28, batch.SourceTokens);
        Assert.AreEqual(12, batch.KeptTokens);
        CollectionAssert.AreEqual(batch.InputIds, tokenizer.Encode([Alphabet, "hello world"], null, 12).InputIds, "Head is the default");
    }

    [TestMethod]
    public void Encode_ShortText_IsTheSameForEveryStrategy()
    {
        var head = tokenizer.Encode(["hello world"], null, 12, TruncationStrategy.Head);
        var headTail = tokenizer.Encode(["hello world"], null, 12, TruncationStrategy.HeadTail);
        CollectionAssert.AreEqual(new[] { Cls, Hello, World, Sep }, headTail.InputIds);
        CollectionAssert.AreEqual(head.InputIds, headTail.InputIds);
        Assert.AreEqual(0, headTail.TruncatedRows);
    }

    [TestMethod]
    public void Encode_PairHeadTail_SharesLongestFirstThenEachTextKeepsHeadAndTail()
    {
        // Budget 15 - 3 = 12; longest-first gives the pair its 2 tokens and the text 10: a b c + t ... z.
        var batch = tokenizer.Encode([Alphabet], ["hello world"], 15, TruncationStrategy.HeadTail);
        CollectionAssert.AreEqual(Row([Cls], Letters('a', 'b', 'c', 't', 'u', 'v', 'w', 'x', 'y', 'z'), [Sep, Hello, World, Sep]), batch.InputIds);
        CollectionAssert.AreEqual(Row(Enumerable.Repeat(0L, 12).ToArray(), [1, 1, 1]), batch.TokenTypeIds);

        // Two long texts: 6 and 6 of budget 12, each head round(6 × 128 / 510) = 2 and tail 4.
        var both = tokenizer.Encode([Alphabet], [Alphabet], 15, TruncationStrategy.HeadTail);
        CollectionAssert.AreEqual(
            Row([Cls], Letters('a', 'b', 'w', 'x', 'y', 'z'), [Sep], Letters('a', 'b', 'w', 'x', 'y', 'z'), [Sep]), both.InputIds);
        Assert.AreEqual(52, both.SourceTokens);
        Assert.AreEqual(12, both.KeptTokens);
    }

    [TestMethod]
    [DataRow(26, 10, 8, new[] { 0, 8, 16 })]
    [DataRow(26, 10, 10, new[] { 0, 10, 16 })]
    [DataRow(26, 10, 16, new[] { 0, 16 })]
    [DataRow(10, 10, 5, new[] { 0 })]
    [DataRow(3, 10, 5, new[] { 0 })]
    [DataRow(11, 10, 5, new[] { 0, 1 })]
    [DataRow(20, 10, 5, new[] { 0, 5, 10 })]
    public void WindowStarts_StrideThenALastWindowEndingWithTheText(int length, int window, int stride, int[] expected)
    {
        CollectionAssert.AreEqual(expected, TokenTruncation.WindowStarts(length, window, stride));
    }

    [TestMethod]
    public void EncodeWindows_LongTextBecomesOverlappingWindows_ShortTextOne()
    {
        // maxLength 12: windows of 10 word pieces, stride 8: starts 0, 8 and 16 (the last ends with the text).
        var (batch, source) = tokenizer.EncodeWindows(["hello world", Alphabet], 12, 8);
        Assert.AreEqual(4, batch.BatchSize);
        Assert.AreEqual(12, batch.SequenceLength);
        CollectionAssert.AreEqual(new[] { 0, 1, 1, 1 }, source);
        CollectionAssert.AreEqual(
            Row([Cls, Hello, World, Sep], Enumerable.Repeat(Pad, 8).ToArray(),
                [Cls], Letters('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'), [Sep],
                [Cls], Letters('i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r'), [Sep],
                [Cls], Letters('q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z'), [Sep]),
            batch.InputIds);
        Assert.AreEqual(0, batch.TruncatedRows, "windows cut nothing");
        Assert.AreEqual(0, batch.TokenTypeIds.Sum());
    }

    [TestMethod]
    public void EncodeWindows_BadStride_ThrowsNamingIt()
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => tokenizer.EncodeWindows([Alphabet], 12, 11));
        Assert.AreEqual("stride", e.ParamName);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => tokenizer.EncodeWindows([Alphabet], 12, 0));
    }

    [TestMethod]
    public void Encode_UnknownStrategy_ThrowsNamingIt()
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => tokenizer.Encode([Alphabet], null, 12, (TruncationStrategy)7));
        Assert.AreEqual("truncation", e.ParamName);
    }
}
