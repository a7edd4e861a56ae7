using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>Bad input and faults (issue 13 §1): each case fails with a clear error or behaves as docs/RELIABILITY.md says.</summary>
[TestClass]
public sealed class BadInputTests
{
    private static string root = string.Empty;
    private static PretrainedModel baseModel = null!;
    private static MLContext context = null!;
    private static LoraTransformer binary = null!;
    private static string savedPath = string.Empty;
    private static IDataView binaryData = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        baseModel = TinyBert.Create(Path.Combine(root, "base"));
        context = new MLContext(seed: 3);
        binaryData = context.Data.LoadFromEnumerable(Binary(32, 1));
        binary = context.Transforms.LoraFineTune(Options(epochs: 2)).Fit(binaryData);
        savedPath = Path.Combine(root, "model.zip");
        context.Model.Save(binary, binaryData.Schema, savedPath);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        binary?.Dispose();
        TinyBert.DeleteTempDirectory(root);
    }

    private static LoraFineTuningOptions Options(int epochs = 1)
    {
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = epochs;
        return options;
    }

    private static IEnumerable<BinaryRow> Binary(int count, int seed) =>
        TinyBert.Sentences(count, 2, seed).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 });

    private static float[] Scores(ITransformer model, IEnumerable<string?> texts)
    {
        var data = context.Data.LoadFromEnumerable(texts.Select(t => new NullableTextRow { Text = t, Label = true }).ToList());
        return model.Transform(data).GetColumn<float>("Score").ToArray();
    }

    private static List<string> FineTuningLog(MLContext ml)
    {
        var log = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Source.Contains("LoraFineTuning", StringComparison.Ordinal))
            {
                lock (log)
                {
                    log.Add(e.Message);
                }
            }
        };
        return log;
    }

    // ---- Text ----

    [TestMethod]
    public void Transform_NullText_ScoresAsEmptyString()
    {
        // ML.NET has no missing value for text: a null string reads as an empty one.
        var scores = Scores(binary, [null, string.Empty, "good movie"]);

        // Same tokens; with length grouping the two rows sit at other positions of the batch, where float32 kernels may
        // round differently (observed 4e-9).
        Assert.AreEqual(scores[1], scores[0], 1e-6);
        Assert.IsTrue(float.IsFinite(scores[2]));
    }

    [TestMethod]
    public void Fit_NullText_TrainsWithNullAsEmptyString()
    {
        var rows = Binary(16, 2).Select((r, i) => new NullableTextRow { Text = i % 4 == 0 ? null : r.Text, Label = r.Label }).ToList();
        var data = context.Data.LoadFromEnumerable(rows);
        using var model = context.Transforms.LoraFineTune(Options()).Fit(data);
        Assert.IsTrue(model.Transform(data).GetColumn<float>("Score").All(float.IsFinite));
    }

    [TestMethod]
    public void Transform_EmptyAndWhitespaceText_ScoresFinite()
    {
        var scores = Scores(binary, [string.Empty, " ", "\t\n  \r\n", "\u00A0\u2003"]);
        Assert.IsTrue(scores.All(float.IsFinite), string.Join(", ", scores));

        // Whitespace yields no tokens: the row is [CLS] [SEP], the same as the empty string (at another position of the
        // length-grouped batch: float32 rounding only).
        Assert.AreEqual(scores[0], scores[1], 1e-6);
        Assert.AreEqual(scores[0], scores[2], 1e-6);
    }

    [TestMethod]
    public void Transform_OneMegabyteText_TruncatedToMaxSequenceLength()
    {
        var words = TinyBert.Sentences(1, 2, 5)[0].Text + " ";
        var huge = new StringBuilder(1 << 20);
        while (huge.Length < (1 << 20))
        {
            huge.Append(words);
        }

        // Only the first MaxSequenceLength (16) tokens count: the 1 MB row scores as a 100-repetition prefix of itself.
        var prefix = string.Concat(Enumerable.Repeat(words, 100));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var scores = Scores(binary, [huge.ToString(), prefix]);
        Assert.IsTrue(float.IsFinite(scores[0]));

        // Same tokens in the same batch: the forward pass is the same computation.
        Assert.AreEqual(scores[1], scores[0], 1e-6f);
        Assert.IsTrue(watch.Elapsed < TimeSpan.FromSeconds(30), $"took {watch.Elapsed}");
    }

    [TestMethod]
    public void Transform_UnpairedSurrogatesAndControlCharacters_ScoreFinite()
    {
        var scores = Scores(binary,
        [
            "good \uD800 movie", "bad \uDC00", "\uDBFF", "\uDC00\uD800",
            "good\u0000movie", "\u0001\u0002\u0007\u001B[31m bad \u007F", "\u200B\u200E\uFEFF", "good\r\n\r\nbad\f\v",
        ]);
        Assert.IsTrue(scores.All(float.IsFinite), string.Join(", ", scores));
    }

    [TestMethod]
    public void Transform_EmojiRtlCjkText_ScoreFinite()
    {
        var scores = Scores(binary,
        [
            "good 😀👍🏽 movie", "👨‍👩‍👧‍👦", "שלום עולם good", "مرحبا بالعالم", "你好世界 bad", "こんにちは", "한국어", "e\u0301\u0301\u0301", "\u202Egood\u202C",
        ]);
        Assert.IsTrue(scores.All(float.IsFinite), string.Join(", ", scores));
    }

    [TestMethod]
    public void Fit_PairColumnNullOnSomeRows_TrainsAndScoresNullAsEmpty()
    {
        var rows = Binary(16, 3).Select((r, i) => new NullablePairRow { Text = r.Text, Pair = i % 3 == 0 ? null : "good", Label = r.Label }).ToList();
        var data = context.Data.LoadFromEnumerable(rows);
        var options = Options();
        options.TextPairColumnName = "Pair";
        using var model = context.Transforms.LoraFineTune(options).Fit(data);
        var test = context.Data.LoadFromEnumerable(new[]
        {
            new NullablePairRow { Text = "good movie", Pair = null },
            new NullablePairRow { Text = "good movie", Pair = string.Empty },
        });
        var scores = model.Transform(test).GetColumn<float>("Score").ToArray();
        Assert.IsTrue(float.IsFinite(scores[0]));

        // Same tokens at another position of the batch (length grouping): float32 rounding only (observed 7e-9).
        Assert.AreEqual(scores[1], scores[0], 1e-6);
    }

    // ---- Labels ----

    [TestMethod]
    public void Fit_NaNRegressionLabels_SkipsRowsAndLogsCount()
    {
        var ml = new MLContext(seed: 1);
        var log = FineTuningLog(ml);
        var rows = TinyBert.Sentences(20, 2, 4).Select((s, i) => new RegressionRow
        {
            Text = s.Text,
            Label = i % 5 == 0 ? float.NaN : i == 1 ? float.PositiveInfinity : s.Class,
        }).ToList();
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(ml.Data.LoadFromEnumerable(rows));
        string expected = "Skipped 5 rows with a missing label in column 'Label'";
        Assert.IsTrue(log.Any(m => m.Contains(expected, StringComparison.Ordinal)), string.Join(Environment.NewLine, log));
        Assert.IsTrue(log.Any(m => m.Contains("training on 15 rows", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void Fit_MissingKeyLabels_SkipsRowsAndLogsCount()
    {
        // Labels outside MapValueToKey's key data become key 0, the missing key.
        var ml = new MLContext(seed: 1);
        var log = FineTuningLog(ml);
        var rows = TinyBert.Sentences(18, 3, 4).Select((s, i) => new TextRow { Text = s.Text, Label = i % 6 == 0 ? "unknown" : "abc"[s.Class].ToString() }).ToList();
        var keys = ml.Data.LoadFromEnumerable("abc".Select(k => new LabelOnlyRow { Label = k.ToString() }));
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label", keyData: keys).Append(ml.Transforms.LoraFineTune(Options()));
        var model = pipeline.Fit(ml.Data.LoadFromEnumerable(rows));
        (model.LastTransformer as IDisposable)?.Dispose();
        Assert.IsTrue(log.Any(m => m.Contains("Skipped 3 rows with a missing label in column 'Label' (key 0", StringComparison.Ordinal)),
            string.Join(Environment.NewLine, log));
        Assert.IsTrue(log.Any(m => m.Contains("training on 15 rows", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void Fit_OnlyMissingLabels_ThrowsNoRows()
    {
        var rows = TinyBert.Sentences(6, 2, 4).Select(s => new RegressionRow { Text = s.Text, Label = float.NaN }).ToList();
        var error = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(Options()).Fit(context.Data.LoadFromEnumerable(rows)));
        StringAssert.Contains(error.Message, "no rows with a label in column 'Label'");
    }

    [TestMethod]
    public void Fit_OneClassOfThreeKeys_ThrowsNamingLabel()
    {
        var rows = TinyBert.Sentences(6, 1, 4).Select(s => new KeyRow { Text = s.Text, Label = 2 }).ToList();
        var error = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(Options()).Fit(context.Data.LoadFromEnumerable(rows)));
        StringAssert.Contains(error.Message, "'Label' has a single class");
    }

    [TestMethod]
    public void Fit_OneRow_ThrowsNamingLabel()
    {
        var binaryError = Assert.Throws<ArgumentException>(() =>
            context.Transforms.LoraFineTune(Options()).Fit(context.Data.LoadFromEnumerable(Binary(1, 1))));
        StringAssert.Contains(binaryError.Message, "'Label' has a single class");
        var regressionError = Assert.Throws<ArgumentException>(() =>
            context.Transforms.LoraFineTune(Options()).Fit(context.Data.LoadFromEnumerable(new[] { new RegressionRow { Text = "good", Label = 2 } })));
        StringAssert.Contains(regressionError.Message, "'Label' has the same value");
    }

    [TestMethod]
    public void Fit_FewerRowsThanBatchSize_TrainsOnePartialBatchPerEpoch()
    {
        var data = context.Data.LoadFromEnumerable(Binary(3, 6));
        var options = Options(epochs: 2);
        options.BatchSize = 16;
        using var model = context.Transforms.LoraFineTune(options).Fit(data);
        Assert.AreEqual(3, model.Transform(data).GetColumn<float>("Score").Count(float.IsFinite));
    }

    // ---- Schema ----

    [TestMethod]
    public void Fit_TextColumnOfWrongType_ThrowsNamingColumnAndTypes()
    {
        var numeric = context.Data.LoadFromEnumerable(new[] { new NumericTextRow { Text = 1, Label = true } });
        var numericError = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(Options()).Fit(numeric));
        StringAssert.Contains(numericError.Message, "'Text' has type Single; expected String");

        var vector = context.Data.LoadFromEnumerable(new[] { new TextVectorRow { Text = ["good", "bad"], Label = true } });
        var vectorError = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(Options()).Fit(vector));
        StringAssert.Contains(vectorError.Message, "'Text' has type Vector<String");
        StringAssert.Contains(vectorError.Message, "expected String");
        var shapeError = Assert.Throws<ArgumentOutOfRangeException>(() =>
            context.Transforms.LoraFineTune(Options()).GetOutputSchema(Internal.MlNetHost.ShapeOf(vector.Schema)));
        StringAssert.Contains(shapeError.Message, "'Text' has type String vector; expected String");
        var transformError = Assert.Throws<ArgumentOutOfRangeException>(() => binary.Transform(vector));
        StringAssert.Contains(transformError.Message, "'Text'");
    }

    [TestMethod]
    public void Fit_DoubleLabel_ThrowsNamingColumnAndTypes()
    {
        var data = context.Data.LoadFromEnumerable(new[] { new DoubleLabelRow { Text = "good", Label = 1 } });
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(Options()).Fit(data));
        StringAssert.Contains(error.Message, "Label column 'Label' has type Double");
        StringAssert.Contains(error.Message, "Single (regression)");
    }

    [TestMethod]
    [DataRow("Score", "PredictedLabel")]
    [DataRow("Probability", "Score")]
    [DataRow("Score", "Text")]
    [DataRow("PredictedLabel", "Label")]
    public void Options_OutputNameCollision_ThrowsNamingBothOptions(string field, string name)
    {
        var options = Options();
        typeof(LoraFineTuningOptions).GetField(field + "ColumnName")!.SetValue(options, name);
        var error = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(options));
        StringAssert.Contains(error.Message, $"'{name}'");
        StringAssert.Contains(error.Message, field + "ColumnName");
    }

    [TestMethod]
    public void Transform_InputColumnNamedLikeAnOutput_OutputHidesIt()
    {
        var data = context.Data.LoadFromEnumerable(new[] { new ScoreInputRow { Text = "good movie", Score = "input" } });
        var output = binary.Transform(data);
        Assert.AreEqual(NumberDataViewType.Single, output.Schema["Score"].Type);
        Assert.IsTrue(output.Schema.Any(c => c.IsHidden && c.Name == "Score" && c.Type is TextDataViewType));
        Assert.IsTrue(output.GetColumn<float>("Score").All(float.IsFinite));
    }

    [TestMethod]
    public void Transform_SchemaWithoutTextColumn_ThrowsNamingColumn()
    {
        var data = context.Data.LoadFromEnumerable(new[] { new RegressionRow { Text = "good", Label = 1 } });
        var renamed = context.Transforms.CopyColumns("Review", "Text").Fit(data).Transform(data);
        var noText = context.Transforms.DropColumns("Text").Fit(renamed).Transform(renamed);
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => binary.Transform(noText));
        StringAssert.Contains(error.Message, "no text column 'Text' (expected type String)");
    }

    // ---- Numbers ----

    [TestMethod]
    public void Fit_MaxSequenceLengthAboveModel_ThrowsNamingLimit()
    {
        var options = Options();
        options.MaxSequenceLength = 65;
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(options).Fit(binaryData));
        Assert.AreEqual(nameof(LoraFineTuningOptions.MaxSequenceLength), error.ParamName);
        StringAssert.Contains(error.Message, "max_position_embeddings (64)");
    }

    [TestMethod]
    [DataRow(nameof(LoraFineTuningOptions.Rank), 0)]
    [DataRow(nameof(LoraFineTuningOptions.Rank), -1)]
    [DataRow(nameof(LoraFineTuningOptions.Alpha), 0.0)]
    [DataRow(nameof(LoraFineTuningOptions.Alpha), -1.0)]
    [DataRow(nameof(LoraFineTuningOptions.Alpha), double.NaN)]
    [DataRow(nameof(LoraFineTuningOptions.Dropout), -0.1)]
    [DataRow(nameof(LoraFineTuningOptions.Dropout), 1.0)]
    [DataRow(nameof(LoraFineTuningOptions.Dropout), double.NaN)]
    public void Options_OutOfRangeNumber_ThrowsNamingOption(string field, object value)
    {
        var options = Options();
        var info = typeof(LoraFineTuningOptions).GetField(field)!;
        info.SetValue(options, Convert.ChangeType(value, info.FieldType, System.Globalization.CultureInfo.InvariantCulture));
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(options));
        Assert.AreEqual(field, error.ParamName);
    }

    [TestMethod]
    public void Fit_TargetModulesMatchNothing_ErrorListsExistingModuleNames()
    {
        var options = Options();
        options.TargetModules = ["q_proj", "v_proj"];
        var error = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(options).Fit(binaryData));
        Assert.AreEqual(nameof(LoraFineTuningOptions.TargetModules), error.ParamName);
        StringAssert.Contains(error.Message, "q_proj, v_proj");
        StringAssert.Contains(error.Message, "its linear layers are named: query, key, value, dense");
    }

    // ---- Model files ----

    private static string CopyOfSaved(string name)
    {
        string path = Path.Combine(root, name);
        File.Copy(savedPath, path, overwrite: true);
        return path;
    }

    private static void AssertGoodFileStillLoads()
    {
        var model = context.Model.Load(savedPath, out _);
        try
        {
            Assert.AreEqual(Scores(binary, ["good movie"])[0], Scores(model, ["good movie"])[0]);
        }
        finally
        {
            (model as IDisposable)?.Dispose();
        }
    }

    [TestMethod]
    public void Load_TruncatedZip_ThrowsFormatExceptionFromMlNet()
    {
        string path = CopyOfSaved("truncated.zip");
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        // ML.NET opens the zip before any LoRA code runs: its FormatException, with the zip reader's InvalidDataException inside.
        var error = Assert.ThrowsExactly<FormatException>(() => context.Model.Load(path, out _));
        StringAssert.Contains(error.Message, "zip");
        Assert.IsInstanceOfType<InvalidDataException>(error.InnerException);
        AssertGoodFileStillLoads();
    }

    [TestMethod]
    public void Load_AdapterEntryWithFlippedBytes_ThrowsNamingEntryAndChecksum()
    {
        // Flip bytes in the stored (compressed) data of the LoraAdapter.bin entry, as a damaged disk or download would.
        string path = CopyOfSaved("flipped.zip");
        long offset, length;
        using (var zip = ZipFile.OpenRead(path))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("LoraAdapter.bin", StringComparison.Ordinal));
            length = entry.CompressedLength;
            offset = LocalDataOffset(path, entry.FullName);
        }

        var bytes = File.ReadAllBytes(path);
        for (long i = offset + length / 3; i < offset + length / 3 + 8; i++)
        {
            bytes[i] ^= 0xFF;
        }

        File.WriteAllBytes(path, bytes);
        var error = Assert.Throws<Exception>(() => context.Model.Load(path, out _));
        Assert.IsInstanceOfType<InvalidDataException>(error.GetBaseException(), error.ToString());
        StringAssert.Contains(error.GetBaseException().Message, "'LoraAdapter.bin' entry of this LoRA model file is damaged");
        AssertGoodFileStillLoads();
    }

    [TestMethod]
    public void Load_AdapterEntryRewrittenInValidZip_ThrowsInvalidData()
    {
        // A well-formed zip whose LoraAdapter.bin has a damaged header (magic and tensor count).
        string path = CopyOfSaved("badheader.zip");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("LoraAdapter.bin", StringComparison.Ordinal));
            byte[] content;
            using (var stream = entry.Open())
            using (var buffer = new MemoryStream())
            {
                stream.CopyTo(buffer);
                content = buffer.ToArray();
            }

            for (int i = 0; i < 12; i++)
            {
                content[i] ^= 0x5A;
            }

            string name = entry.FullName;
            entry.Delete();
            using var write = zip.CreateEntry(name).Open();
            write.Write(content);
        }

        var error = Assert.Throws<Exception>(() => context.Model.Load(path, out _));
        Assert.IsInstanceOfType<InvalidDataException>(error.GetBaseException(), error.ToString());
        AssertGoodFileStillLoads();
    }

    [TestMethod]
    public void Load_NewerFormatVersion_ThrowsNamingVersion()
    {
        string path = CopyOfSaved("newer.zip");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("Model.key", StringComparison.Ordinal) && e.FullName.Contains("Transform", StringComparison.Ordinal)
                || e.FullName == "Model.key");
            byte[] content;
            using (var stream = entry.Open())
            using (var buffer = new MemoryStream())
            {
                stream.CopyTo(buffer);
                content = buffer.ToArray();
            }

            // ML.NET's model header: ModelVerWritten at 0x48, ModelVerReadable at 0x4C. A newer writer that older readers cannot read.
            Assert.AreEqual(0x00010004u, BinaryPrimitives.ReadUInt32LittleEndian(content.AsSpan(0x48)));
            BinaryPrimitives.WriteUInt32LittleEndian(content.AsSpan(0x48), 0x00010009);
            BinaryPrimitives.WriteUInt32LittleEndian(content.AsSpan(0x4C), 0x00010009);
            string name = entry.FullName;
            entry.Delete();
            using var write = zip.CreateEntry(name).Open();
            write.Write(content);
        }

        var error = Assert.Throws<Exception>(() => context.Model.Load(path, out _));
        Assert.IsInstanceOfType<InvalidDataException>(error.GetBaseException(), error.ToString());
        StringAssert.Contains(error.GetBaseException().Message, "format version 0x00010009");
        StringAssert.Contains(error.GetBaseException().Message, "reads format versions up to 0x00010004");
        AssertGoodFileStillLoads();
    }

    [TestMethod]
    public void Save_UnderAFilePath_ThrowsAndWritesNothing()
    {
        string blocker = Path.Combine(root, "blocker.txt");
        File.WriteAllText(blocker, "a file, not a folder");
        string path = Path.Combine(blocker, "x.zip");
        Assert.Throws<IOException>(() => context.Model.Save(binary, binaryData.Schema, path));
        Assert.AreEqual("a file, not a folder", File.ReadAllText(blocker));
        Assert.IsFalse(File.Exists(path));
    }

    [TestMethod]
    public void Save_FailsMidway_ThrowsClearlyAndTempFileThenMoveKeepsOldFile()
    {
        var disposed = context.Transforms.LoraFineTune(Options()).Fit(context.Data.LoadFromEnumerable(Binary(8, 9)));
        disposed.Dispose();

        // ML.NET's Model.Save(path) creates the file before the transformers write: a failure leaves it partial (ML.NET's
        // behaviour; if this assertion ever fails, ML.NET replaces files atomically now and RELIABILITY.md should say so).
        string direct = CopyOfSaved("direct.zip");
        var before = File.ReadAllBytes(direct);
        var error = Assert.Throws<Exception>(() => context.Model.Save(disposed, binaryData.Schema, direct));
        Assert.IsInstanceOfType<ObjectDisposedException>(error.GetBaseException());
        Assert.AreNotEqual(before.Length, new FileInfo(direct).Length);

        // The documented way to replace a model file: save to a temporary file in the same folder, then move it over.
        string path = CopyOfSaved("overwrite.zip");
        string temporary = path + ".tmp";
        Assert.Throws<Exception>(() =>
        {
            try
            {
                context.Model.Save(disposed, binaryData.Schema, temporary);
                File.Move(temporary, path, overwrite: true);
            }
            finally
            {
                File.Delete(temporary);
            }
        });
        CollectionAssert.AreEqual(before, File.ReadAllBytes(path));
        Assert.IsFalse(File.Exists(temporary));
    }

    [TestMethod]
    public void Fit_TwiceOnOneEstimator_TwoIndependentModels()
    {
        // An estimator holds options, not a model: each Fit trains its own model, and disposing one leaves the other working.
        var estimator = context.Transforms.LoraFineTune(Options());
        var data = context.Data.LoadFromEnumerable(Binary(16, 41));
        var first = estimator.Fit(data);
        using var second = estimator.Fit(data);
        Assert.AreNotSame(first, second);
        var texts = new[] { "good movie", "bad food" };
        var secondScores = Scores(second, texts);
        Assert.IsTrue(secondScores.All(float.IsFinite));
        first.Dispose();
        Assert.Throws<ObjectDisposedException>(() => Scores(first, texts));
        CollectionAssert.AreEqual(secondScores, Scores(second, texts), "the second model is unaffected");
    }

    /// <summary>Where an entry's stored data starts: after its local header (30 bytes, the name and the extra field).</summary>
    private static long LocalDataOffset(string path, string entryName)
    {
        var bytes = File.ReadAllBytes(path);
        var name = Encoding.UTF8.GetBytes(entryName);
        for (int i = 0; i + 30 + name.Length <= bytes.Length; i++)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(i)) == 0x04034b50
                && BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(i + 26)) == name.Length
                && bytes.AsSpan(i + 30, name.Length).SequenceEqual(name))
            {
                return i + 30 + name.Length + BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(i + 28));
            }
        }

        throw new AssertFailedException($"No local header for {entryName}.");
    }

    public sealed class NullableTextRow
    {
        public string? Text { get; set; }

        public bool Label { get; set; }
    }

    public sealed class NullablePairRow
    {
        public string Text { get; set; } = string.Empty;

        public string? Pair { get; set; }

        public bool Label { get; set; }
    }

    public sealed class KeyRow
    {
        public string Text { get; set; } = string.Empty;

        [KeyType(3)]
        public uint Label { get; set; }
    }

    public sealed class LabelOnlyRow
    {
        public string Label { get; set; } = string.Empty;
    }

    public sealed class NumericTextRow
    {
        public float Text { get; set; }

        public bool Label { get; set; }
    }

    public sealed class TextVectorRow
    {
        public string[] Text { get; set; } = [];

        public bool Label { get; set; }
    }

    public sealed class DoubleLabelRow
    {
        public string Text { get; set; } = string.Empty;

        public double Label { get; set; }
    }

    public sealed class ScoreInputRow
    {
        public string Text { get; set; } = string.Empty;

        public string Score { get; set; } = string.Empty;

        public bool Label { get; set; }
    }
}
