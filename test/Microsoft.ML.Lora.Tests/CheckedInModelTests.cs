using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Checked-in model files must stay readable by later versions, with the predictions they made before saving.
/// TestData/model-v1/ (format 0x00010001: model.zip, its tiny random base as a Hugging Face folder, and its predictions) is
/// a 5-epoch model, kept as the old-format compatibility check; it can no longer be written (Save writes the current
/// format). TestData/model-v3/ (format 0x00010003, adapter SHA-256) is trained on the same base until its five predictions
/// are right; it is written by <see cref="WriteCurrentFixture"/>, run on purpose only, from the repository root:
/// <c>MLLORA_WRITE_FIXTURES=$PWD/test/Microsoft.ML.Lora.Tests/TestData/model-v3 dotnet test test/Microsoft.ML.Lora.Tests -c Release --filter "FullyQualifiedName~CheckedInModelTests.Load_ModelFileOfCurrentVersion"</c>.
/// </summary>
[TestClass]
public sealed class CheckedInModelTests
{
    private const string FixtureVariable = "MLLORA_WRITE_FIXTURES";

    private static string[] Texts => ["good movie", "the service was awful", "a table and a chair", "I love this very nice food", "sad and poor"];

    /// <summary>The right label of each of <see cref="Texts"/> (by its sentiment words).</summary>
    private static string[] TrueLabels => ["positive", "negative", "neutral", "positive", "negative"];

    [TestMethod]
    public void Load_ModelFileOfVersion1_PredictsAsWhenSaved()
    {
        // An untrained-looking 5-epoch model (2 of its 5 saved predictions are wrong): it checks that old files load and
        // predict as they did, not quality.
        var labels = LoadAndCompare("model-v1", 0x00010001);
        Assert.AreEqual(3, labels.Zip(TrueLabels).Count(p => p.First == p.Second), string.Join(", ", labels));
    }

    [TestMethod]
    public void Load_ModelFileOfCurrentVersion_PredictsAsWhenSavedAndRight()
    {
        string? target = Environment.GetEnvironmentVariable(FixtureVariable);
        if (!string.IsNullOrEmpty(target))
        {
            WriteCurrentFixture(target);
        }

        // A trained model of the current format: the saved predictions are reproduced and every one is right, so a
        // loader that, say, dropped the adapter (the base alone predicts at chance) or misread the head fails here.
        var labels = LoadAndCompare("model-v3", 0x00010003);
        CollectionAssert.AreEqual(TrueLabels, labels);
        Assert.IsLessThan(64 * 1024, new FileInfo(Path.Combine(AppContext.BaseDirectory, "TestData", "model-v3", "model.zip")).Length, "LoRA factors and head only");
    }

    /// <summary>Loads TestData/<paramref name="name"/>/model.zip on the base in TestData/model-v1/base, checks its format version and that it predicts expected.tsv; returns the predicted labels.</summary>
    private static string[] LoadAndCompare(string name, uint formatVersion)
    {
        string fixture = Path.Combine(AppContext.BaseDirectory, "TestData", name);
        string modelPath = Path.Combine(fixture, "model.zip");
        Assert.AreEqual(formatVersion, ModelKeyHeader.WrittenFormatVersion(modelPath, "LORATEXT"), $"{name}: format version written");
        string previous = Environment.GetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable) ?? string.Empty;

        // The file records the absolute folder it was trained from (on another machine); point to the copy here.
        Environment.SetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable, Path.Combine(AppContext.BaseDirectory, "TestData", "model-v1", "base"));
        try
        {
            var ml = new MLContext(seed: 1);
            var model = ml.Model.Load(modelPath, out var schema);
            Assert.IsNotNull(schema.GetColumnOrNull("Text"));
            var data = ml.Data.LoadFromEnumerable(Texts.Select(t => new TextRow { Text = t }));
            var scored = model.Transform(data);
            var scores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToList();
            var labels = scored.GetColumn<string>("PredictedLabel").ToList();
            var expected = File.ReadAllLines(Path.Combine(fixture, "expected.tsv"));
            Assert.HasCount(Texts.Length, expected);
            for (int i = 0; i < expected.Length; i++)
            {
                var parts = expected[i].Split('\t');
                Assert.AreEqual(parts[0], labels[i], $"row {i}");
                var values = parts[1].Split(',').Select(h => BitConverter.Int32BitsToSingle(int.Parse(h, NumberStyles.HexNumber, CultureInfo.InvariantCulture))).ToArray();

                // Bitwise on the machine that wrote it; another CPU's kernels may round float32 sums differently.
                for (int j = 0; j < values.Length; j++)
                {
                    Assert.AreEqual(values[j], scores[i][j], 1e-5f, $"row {i} class {j}");
                }
            }

            (model as IDisposable)?.Dispose();
            return [.. labels];
        }
        finally
        {
            Environment.SetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable, previous.Length == 0 ? null : previous);
        }
    }

    [TestMethod]
    public void Fit_FixtureDataAndSeedInThisProcess_ReproducesCheckedInPredictions()
    {
        // The checked-in predictions came from training in another process; the same data, base and seed must give the
        // same model here (the shuffle order and initialisation may not depend on per-process state).
        string fixture = Path.Combine(AppContext.BaseDirectory, "TestData", "model-v1");
        string copy = Path.Combine(TinyBert.TempDirectory(), "base");
        CopyDirectory(Path.Combine(fixture, "base"), copy);
        try
        {
            var ml = new MLContext(seed: 5);
            using var model = Train(ml, PretrainedModel.FromHuggingFaceFolder(copy));
            var scored = model.Transform(ml.Data.LoadFromEnumerable(Texts.Select(t => new TextRow { Text = t })));
            var scores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToList();
            var expected = File.ReadAllLines(Path.Combine(fixture, "expected.tsv"));
            for (int i = 0; i < expected.Length; i++)
            {
                var values = expected[i].Split('\t')[1].Split(',').Select(h => BitConverter.Int32BitsToSingle(int.Parse(h, NumberStyles.HexNumber, CultureInfo.InvariantCulture))).ToArray();

                // Bitwise on the machine that wrote it; other CPUs round float32 sums differently over 20 steps.
                for (int j = 0; j < values.Length; j++)
                {
                    Assert.AreEqual(values[j], scores[i][j], 1e-4f, $"row {i} class {j}");
                }
            }
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(copy)!, recursive: true);
        }
    }

    /// <summary>The v1 fixture's training: 5 epochs, plain shuffled batches; <paramref name="epochs"/> and grouping for the current one.</summary>
    private static TransformerChain<Microsoft.ML.Transforms.KeyToValueMappingTransformer> Train(MLContext ml, PretrainedModel baseModel, int epochs = 5, bool groupByLength = false, int rows = 60)
    {
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(rows, 3, 5)
            .Select(s => new TextRow { Text = s.Text, Label = s.Class switch { 0 => "positive", 1 => "negative", _ => "neutral" } }));
        var options = LoraFineTuningTests.FastOptions(baseModel);
        options.MaxEpochs = epochs;

        // The v1 fixture was trained with plain shuffled batches (before GroupByLength existed); grouping reorders the
        // batches and so trains another model.
        options.GroupByLength = groupByLength;
        return ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoraFineTune(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"))
            .Fit(data);
    }

    private static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        }
    }

    /// <summary>
    /// Writes model.zip and expected.tsv of the current-format fixture to <paramref name="directory"/>: 300 toy sentences
    /// (the v1 fixture's generator and seed, 5 times the rows), 10 epochs with length grouping, on the v1 fixture's base
    /// (not copied: both fixtures use TestData/model-v1/base).
    /// </summary>
    private static void WriteCurrentFixture(string directory)
    {
        Directory.CreateDirectory(directory);
        var baseModel = PretrainedModel.FromHuggingFaceFolder(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(directory))!, "model-v1", "base"));
        var ml = new MLContext(seed: 5);
        var model = Train(ml, baseModel, epochs: 10, groupByLength: true, rows: 300);
        var schema = ml.Data.LoadFromEnumerable(Array.Empty<TextRow>()).Schema;
        ml.Model.Save(model, schema, Path.Combine(directory, "model.zip"));
        var scored = model.Transform(ml.Data.LoadFromEnumerable(Texts.Select(t => new TextRow { Text = t })));
        var scores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToList();
        var labels = scored.GetColumn<string>("PredictedLabel").ToList();
        File.WriteAllLines(Path.Combine(directory, "expected.tsv"), labels.Zip(scores).Select(p =>
            p.First + "\t" + string.Join(',', p.Second.Select(v => BitConverter.SingleToInt32Bits(v).ToString("X8", CultureInfo.InvariantCulture)))));
        model.Dispose();
    }
}
