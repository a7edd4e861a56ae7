using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Internal;

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

    private static void WriteFixture(string directory)
    {
        Directory.CreateDirectory(directory);
        var baseModel = TinyBert.Create(Path.Combine(directory, "base"), seed: 5);
        var ml = new MLContext(seed: 5);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(60, 3, 5)
            .Select(s => new TextRow { Text = s.Text, Label = s.Class switch { 0 => "positive", 1 => "negative", _ => "neutral" } }));
        var options = LoraFineTuningTests.FastOptions(baseModel);
        options.MaxEpochs = 5;
        var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoraFineTune(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"))
            .Fit(data);
        ml.Model.Save(model, data.Schema, Path.Combine(directory, "model.zip"));
        var scored = model.Transform(ml.Data.LoadFromEnumerable(Texts.Select(t => new TextRow { Text = t })));
        var scores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToList();
        var labels = scored.GetColumn<string>("PredictedLabel").ToList();
        File.WriteAllLines(Path.Combine(directory, "expected.tsv"), labels.Zip(scores).Select(p =>
            p.First + "\t" + string.Join(',', p.Second.Select(v => BitConverter.SingleToInt32Bits(v).ToString("X8", CultureInfo.InvariantCulture)))));
        model.Dispose();
    }
}
