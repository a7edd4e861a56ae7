using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// A model file written by this version (TestData/model-v1/: model.zip, its tiny random base as a Hugging Face folder, and
/// the predictions it made before saving) must stay readable by later versions. Regenerate only on purpose, with the
/// environment variable MLLORA_WRITE_FIXTURES=&lt;path of this test project's TestData/model-v1&gt;.
/// </summary>
[TestClass]
public sealed class CheckedInModelTests
{
    private const string FixtureVariable = "MLLORA_WRITE_FIXTURES";

    private static string[] Texts => ["good movie", "the service was awful", "a table and a chair", "I love this very nice food", "sad and poor"];

    [TestMethod]
    public void Load_ModelFileOfVersion1_PredictsAsWhenSaved()
    {
        string? target = Environment.GetEnvironmentVariable(FixtureVariable);
        if (!string.IsNullOrEmpty(target))
        {
            WriteFixture(target);
        }

        string fixture = Path.Combine(AppContext.BaseDirectory, "TestData", "model-v1");
        string previous = Environment.GetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable) ?? string.Empty;

        // The file records the absolute folder it was trained from (on another machine); point to the copy here.
        Environment.SetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable, Path.Combine(fixture, "base"));
        try
        {
            var ml = new MLContext(seed: 1);
            var model = ml.Model.Load(Path.Combine(fixture, "model.zip"), out var schema);
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

    private static TransformerChain<Microsoft.ML.Transforms.KeyToValueMappingTransformer> Train(MLContext ml, PretrainedModel baseModel)
    {
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(60, 3, 5)
            .Select(s => new TextRow { Text = s.Text, Label = s.Class switch { 0 => "positive", 1 => "negative", _ => "neutral" } }));
        var options = LoraFineTuningTests.FastOptions(baseModel);
        options.MaxEpochs = 5;

        // The fixture was trained with plain shuffled batches (before GroupByLength existed); grouping reorders the
        // batches and so trains another model.
        options.GroupByLength = false;
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

    private static void WriteFixture(string directory)
    {
        Directory.CreateDirectory(directory);
        var baseModel = TinyBert.Create(Path.Combine(directory, "base"), seed: 5);
        var ml = new MLContext(seed: 5);
        var model = Train(ml, baseModel);
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
