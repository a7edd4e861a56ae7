using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// A checked-in image model file must stay readable, with the predictions it made before saving.
/// TestData/image-model-v1/ (format 0x00010001: model.zip and expected.tsv) was saved by the build before the image and
/// text model files shared their sections and before image models shared their base (so a change of the byte layout
/// fails here): ML.NET's ResNet-18, LoRA r = 1 on <c>layer4.2.conv2</c> and the head, 32-px images, one epoch on the
/// seeded images of <see cref="TestImageFiles"/>. The base is not stored; it is found by its SHA-256 (the recorded path
/// is another machine's, so the application's folder is where it is found). Written on purpose only, from the
/// repository root:
/// <c>MLLORA_WRITE_IMAGE_FIXTURE=$PWD/test/Microsoft.ML.Lora.Tests/TestData/image-model-v1 dotnet test test/Microsoft.ML.Lora.Tests -c Release --filter "FullyQualifiedName~CheckedInImageModelTests"</c>.
/// </summary>
[TestClass]
public sealed class CheckedInImageModelTests
{
    private const string FixtureVariable = "MLLORA_WRITE_IMAGE_FIXTURE";

    [TestMethod]
    public void Load_ImageModelFileOfVersion1_PredictsAsWhenSaved()
    {
        string root = TinyBert.TempDirectory();
        try
        {
            var images = TestImageFiles.Write(Path.Combine(root, "images"), perClass: 3, seed: 9);
            string? target = Environment.GetEnvironmentVariable(FixtureVariable);
            if (!string.IsNullOrEmpty(target))
            {
                WriteFixture(target, images);
            }

            string fixture = Path.Combine(AppContext.BaseDirectory, "TestData", "image-model-v1");
            string modelPath = Path.Combine(fixture, "model.zip");
            Assert.AreEqual(0x00010001u, ModelKeyHeader.WrittenFormatVersion(modelPath, "LORAIMAG"), "format version written");
            Assert.IsLessThan(64 * 1024, new FileInfo(modelPath).Length, "LoRA factors and head only");
            var ml = new MLContext(seed: 1);
            var model = ml.Model.Load(modelPath, out var schema);
            try
            {
                Assert.IsNotNull(schema.GetColumnOrNull("Image"));
                var (labels, scores) = Score(ml, model, images);
                var expected = File.ReadAllLines(Path.Combine(fixture, "expected.tsv"));
                Assert.HasCount(images.Count, expected);
                for (int i = 0; i < expected.Length; i++)
                {
                    var parts = expected[i].Split('\t');
                    Assert.AreEqual(parts[0], labels[i], $"row {i}");
                    var values = parts[1].Split(',').Select(h => BitConverter.Int32BitsToSingle(int.Parse(h, NumberStyles.HexNumber, CultureInfo.InvariantCulture))).ToArray();
                    Assert.HasCount(3, values);
                    for (int j = 0; j < values.Length; j++)
                    {
                        // The fixture was written with the LoRA update merged into the kernel; a model on a shared base
                        // runs it unmerged (W·x + B·A·x), and another CPU's kernels round float32 sums differently.
                        Assert.AreEqual(values[j], scores[i][j], 1e-4f, $"row {i} class {j}");
                    }
                }
            }
            finally
            {
                (model as IDisposable)?.Dispose();
            }
        }
        finally
        {
            TinyBert.DeleteTempDirectory(root);
        }
    }

    private static (List<string> Labels, List<float[]> Scores) Score(MLContext ml, ITransformer model, List<(string Path, string Label)> images)
    {
        var data = ml.Data.LoadFromEnumerable(images.Select(f => new ImageFineTuningTests.ImageBytesRow { Image = File.ReadAllBytes(f.Path), Label = f.Label }).ToList());
        var rows = ml.Data.CreateEnumerable<ImageFineTuningTests.ImagePrediction>(model.Transform(data), reuseRowObject: false).ToList();
        return (rows.Select(r => r.PredictedLabel).ToList(), rows.Select(r => r.Score).ToList());
    }

    /// <summary>Trains the fixture's model (see the class remarks) and writes model.zip and expected.tsv to <paramref name="directory"/>.</summary>
    private static void WriteFixture(string directory, List<(string Path, string Label)> images)
    {
        Directory.CreateDirectory(directory);
        var ml = new MLContext(seed: 4);
        var data = ml.Data.LoadFromEnumerable(images.Select(f => new ImageFineTuningTests.ImageBytesRow { Image = File.ReadAllBytes(f.Path), Label = f.Label }).ToList());
        var options = new LoraImageFineTuningOptions
        {
            ImageSize = 32,
            Rank = 1,
            Alpha = 2,
            TargetModules = @"layer4\.2\.conv2",
            MaxEpochs = 1,
            BatchSize = 3,
            LearningRate = 3e-3,
        };
        using var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoraFineTuneImage(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"))
            .Fit(data);
        ml.Model.Save(model, data.Schema, Path.Combine(directory, "model.zip"));
        var (labels, scores) = Score(ml, model, images);
        File.WriteAllLines(Path.Combine(directory, "expected.tsv"), labels.Zip(scores).Select(p =>
            p.First + "\t" + string.Join(',', p.Second.Select(v => BitConverter.SingleToInt32Bits(v).ToString("X8", CultureInfo.InvariantCulture)))));
    }
}
