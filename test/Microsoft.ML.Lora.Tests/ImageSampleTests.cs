using System.IO.Compression;
using System.Text.RegularExpressions;
using ImageLora;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp.Modules;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// samples/ImageLora's core (<see cref="SampleRun.Execute"/>) on a tiny part of its committed Fashion-MNIST subset: (a) ML.NET's
/// DnnFeaturizeImage + LbfgsMaximumEntropy, (b) LoRA on the convolutions + head through ML.NET's LoraFineTuneImage, (c) head only; their outputs, model files
/// and charts. Also the subset's reader and its errors.
/// </summary>
[TestClass]
public sealed class ImageSampleTests
{
    private const int Train = 200;
    private const int Validation = 50;
    private const int Test = 100;
    private static readonly byte[] PngSignature = [0x89, (byte)'P', (byte)'N', (byte)'G'];
    private static string root = string.Empty;
    private static RunSettings settings = null!;
    private static SampleReport report = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        settings = new RunSettings
        {
            TrainCount = Train,
            ValidationCount = Validation,
            TestCount = Test,
            Size = 32,
            Epochs = 3,
            HeadEpochs = 10,
            OutputDirectory = root,
        };
        report = SampleRun.Execute(settings, _ => { });
    }

    [ClassCleanup]
    public static void Cleanup() => TinyBert.DeleteTempDirectory(root);

    [TestMethod]
    public void Run_ThreeMethods_PredictEveryTestImageWellAboveChance()
    {
        Assert.HasCount(3, report.Results);
        StringAssert.StartsWith(report.Results[0].Name, "(a)");
        StringAssert.StartsWith(report.Results[1].Name, "(b)");
        StringAssert.StartsWith(report.Results[2].Name, "(c)");
        for (int m = 0; m < 3; m++)
        {
            var r = report.Results[m];
            Assert.HasCount(Test, r.Predicted, r.Name);
            Assert.IsTrue(r.Predicted.All(p => p is >= 0 and < 10), r.Name);
            Assert.IsGreaterThan(TimeSpan.Zero, r.TrainingTime, r.Name);

            // Chance is 0.1; 200 training images are enough for far more with pretrained features.
            Assert.IsGreaterThan(0.4, report.Accuracy(m), $"{r.Name}: {report.Accuracy(m)}");
            Assert.IsGreaterThan(0.3, report.MacroF1(m), $"{r.Name}: {report.MacroF1(m)}");
        }

        var counts = ImageLora.Metrics.ConfusionMatrix(report.Data.Test.Labels, report.Results[1].Predicted, 10);
        Assert.AreEqual(Test, counts.Cast<int>().Sum());
        Assert.AreEqual(report.Accuracy(1), Enumerable.Range(0, 10).Sum(c => counts[c, c]) / (double)Test, 1e-12);
    }

    [TestMethod]
    public void Run_TrainableParameters_AreTheAdaptedConvolutionsFactorsAndTheHead()
    {
        const long head = 512 * 10 + 10;
        Assert.AreEqual(head, report.Results[0].TrainableParameters, "(a): LbfgsMaximumEntropy's weights and biases");
        Assert.AreEqual(head, report.Results[2].TrainableParameters, "(c): the head");

        // (b): r·(in·k·k) for lora_A and out·r for lora_B of every convolution the regex names, plus the head.
        using var model = ResNet.FromOnnx(settings.ResNetPath);
        var target = new Regex($"^(?:{settings.TargetModules})$");
        var convs = model.named_modules().Where(m => target.IsMatch(m.name)).Select(m => (Conv2d)m.module).ToList();
        Assert.HasCount(1 + 2 * 9, convs, "the stem and the two 3×3 convolutions of each of the 9 blocks");
        long lora = convs.Sum(c => settings.Rank * (c.weight!.shape[1] * c.weight.shape[2] * c.weight.shape[3] + c.weight.shape[0]));
        Assert.AreEqual(lora + head, report.Results[1].TrainableParameters);
    }

    [TestMethod]
    public void Run_ModelFiles_LoraModelIsSmallAndTheOthersAreTheirFiles()
    {
        // (b): ML.NET's model file of the LoraFineTuneImage pipeline (key mapping, LoRA factors, head; the base by path).
        string loraModel = Path.Combine(root, "ImageLora.lora-model.zip");
        Assert.AreEqual(new FileInfo(loraModel).Length, report.Results[1].ModelBytes);

        // Four bytes per trainable parameter plus headers, far below the 63.7 MB base.
        Assert.IsLessThan(4 * report.Results[1].TrainableParameters + 100_000, report.Results[1].ModelBytes);
        Assert.IsGreaterThan(report.Results[1].TrainableParameters, report.Results[1].ModelBytes);
        Assert.AreEqual(new FileInfo(Path.Combine(root, "ImageLora.mlnet-recipe.zip")).Length, report.Results[0].ModelBytes);
        Assert.AreEqual(new FileInfo(Path.Combine(root, "ImageLora.head-only.zip")).Length, report.Results[2].ModelBytes);
        Assert.IsLessThan(100_000, report.Results[2].ModelBytes);
    }

    [TestMethod]
    public void Run_LoraThroughMlNet_EvaluatorAgreesWithTheSamplesAccuracy()
    {
        Assert.IsNotNull(report.Results[1].EvaluatorAccuracy);
        Assert.AreEqual(report.Accuracy(1), report.Results[1].EvaluatorAccuracy!.Value, 1e-12);
    }

    [TestMethod]
    public void Png_GreyImage_DecodesToTheSamePixels()
    {
        byte[] grey = [.. Enumerable.Range(0, 28 * 28).Select(i => (byte)(i * 7 % 256))];
        using var bitmap = SkiaSharp.SKBitmap.Decode(MlNetLoraRun.Png(grey));
        Assert.AreEqual(28, bitmap.Width);
        Assert.AreEqual(28, bitmap.Height);
        for (int i = 0; i < grey.Length; i += 37)
        {
            Assert.AreEqual(grey[i], bitmap.GetPixel(i % 28, i / 28).Red, $"pixel {i}");
        }
    }

    [TestMethod]
    public void Run_Charts_ArePngFilesAndCurvesHaveOnePointPerEpoch()
    {
        foreach (string path in new[] { report.ConfusionMatrixPath, report.EpochCurvePath })
        {
            byte[] bytes = File.ReadAllBytes(path);
            CollectionAssert.AreEqual(PngSignature, bytes[..4], path);
            Assert.IsGreaterThan(10_000, bytes.Length, path);
        }

        Assert.HasCount(0, report.Results[0].Curve);
        CollectionAssert.AreEqual(Enumerable.Range(1, settings.Epochs).ToArray(), report.Results[1].Curve.Select(e => e.Epoch).ToArray());
        Assert.HasCount(10, report.Results[2].Curve);
        Assert.IsLessThan(report.Results[2].Curve[0].TrainingLoss, report.Results[2].Curve[^1].TrainingLoss, "the head's loss falls");
        Assert.IsLessThan(report.Results[1].Curve[0].TrainingLoss, report.Results[1].Curve[^1].TrainingLoss, "(b)'s loss falls");
    }

    [TestMethod]
    public void CommittedSubset_HasItsDocumentedCountsAndAllTenClasses()
    {
        string data = Path.Combine(AppContext.BaseDirectory, "data");
        var train = FashionMnist.Read(data, "train");
        var test = FashionMnist.Read(data, "t10k");
        Assert.AreEqual(ImageLora.CommandLine.SubsetTrainCount, train.Count);
        Assert.AreEqual(ImageLora.CommandLine.SubsetTestCount, test.Count);
        Assert.IsTrue(train.Images.All(i => i.Length == 28 * 28));
        foreach (var set in new[] { train, test })
        {
            var perClass = set.Labels.GroupBy(l => l).ToDictionary(g => g.Key, g => g.Count());
            Assert.HasCount(10, perClass);
            Assert.IsTrue(perClass.Values.All(c => c > set.Count / 20), string.Join(", ", perClass.Values));
        }
    }

    [TestMethod]
    public void CommittedSubset_EqualsTheFullDatasetRowsInTheSeededOrder()
    {
        const string full = "/usr/share/datasets/fashion-mnist";
        if (!File.Exists(Path.Combine(full, "train-images-idx3-ubyte.gz")))
        {
            Assert.Inconclusive($"{full} is not installed (apt-get install dataset-fashion-mnist).");
        }

        var subset = FashionMnist.Read(Path.Combine(AppContext.BaseDirectory, "data"), "train");
        var all = FashionMnist.Read(full, "train");
        int[] order = FashionMnist.SubsetOrder(all.Count);
        for (int i = 0; i < subset.Count; i += 97)
        {
            CollectionAssert.AreEqual(all.Images[order[i]], subset.Images[i], $"row {i}");
            Assert.AreEqual(all.Labels[order[i]], subset.Labels[i], $"row {i}");
        }

        CollectionAssert.AreEqual(FashionMnist.Read(full, "t10k").Images[999], FashionMnist.Read(Path.Combine(AppContext.BaseDirectory, "data"), "t10k").Images[999]);
    }

    [TestMethod]
    public void Read_TruncatedOrMissingFile_NamesTheFile()
    {
        string dir = Path.Combine(root, "bad-data");
        Directory.CreateDirectory(dir);
        string images = Path.Combine(dir, "train-images-idx3-ubyte.gz");
        using (var file = File.Create(images))
        using (var gzip = new GZipStream(file, CompressionLevel.Fastest))
        {
            gzip.Write([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2, 3]);   // two images announced, 3 bytes given
        }

        var e = Assert.ThrowsExactly<InvalidDataException>(() => FashionMnist.Read(dir, "train"));
        StringAssert.Contains(e.Message, images);
        var missing = Assert.ThrowsExactly<FileNotFoundException>(() => FashionMnist.Read(dir, "t10k"));
        StringAssert.Contains(missing.Message, "t10k-images-idx3-ubyte.gz");
    }

    [TestMethod]
    public void Load_MoreRowsThanTheFolderHolds_SaysWhatItHasAndWhatToDo()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => SampleData.Load(settings with { TrainCount = 10_000 }));
        StringAssert.Contains(e.Message, "--data");
        StringAssert.Contains(e.Message, $"{ImageLora.CommandLine.SubsetTrainCount} training");
    }
}
