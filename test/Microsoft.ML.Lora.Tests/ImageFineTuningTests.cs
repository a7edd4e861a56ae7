using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Engine.Images;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Transforms.Image;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// <c>mlContext.Transforms.LoraFineTuneImage</c> on ML.NET's real ResNet-18 (the NuGet package's ONNX file) with small
/// seeded PNG images (three colour/pattern classes, 40–56 px, resized to 64 px), one shared fit of 3 epochs.
/// </summary>
[TestClass]
public sealed class ImageFineTuningTests
{
    private const int ImageSide = 64;
    private static string root = string.Empty;
    private static MLContext context = null!;
    private static List<(string Path, string Label)> files = null!;
    private static IDataView data = null!;
    private static TransformerChain<Microsoft.ML.Transforms.KeyToValueMappingTransformer> chain = null!;
    private static double fitSeconds;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        files = TestImageFiles.Write(Path.Combine(root, "images"), perClass: 12, seed: 5);
        context = new MLContext(seed: 3);
        data = context.Data.LoadFromEnumerable(files.Select(f => new ImageBytesRow { Image = File.ReadAllBytes(f.Path), Label = f.Label }).ToList());
        var stopwatch = Stopwatch.StartNew();
        chain = Pipeline(context).Fit(data);
        fitSeconds = stopwatch.Elapsed.TotalSeconds;
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        (chain as IDisposable)?.Dispose();
        TinyBert.DeleteTempDirectory(root);
    }

    internal static LoraImageFineTuningOptions FastOptions() => new()
    {
        ImageSize = ImageSide,
        MaxEpochs = 3,
        BatchSize = 6,
        LearningRate = 3e-3,
        InferenceBatchSize = 8,
    };

    private static EstimatorChain<Microsoft.ML.Transforms.KeyToValueMappingTransformer> Pipeline(MLContext ml, LoraImageFineTuningOptions? options = null) =>
        ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoraFineTuneImage(options ?? FastOptions()))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));

    private static LoraImageTransformer LoraOf(ITransformer model) =>
        ((IEnumerable<ITransformer>)model).OfType<LoraImageTransformer>().Single();

    private static List<ImagePrediction> Predictions(ITransformer model, IDataView input) =>
        context.Data.CreateEnumerable<ImagePrediction>(model.Transform(input), reuseRowObject: false).ToList();

    [TestMethod]
    public void Fit_KeyLabelAndRawBytes_ClassifiesTheTrainingImagesAndEvaluates()
    {
        var stopwatch = Stopwatch.StartNew();
        var scored = chain.Transform(data);
        var metrics = context.MulticlassClassification.Evaluate(scored, "Label", "Score", "PredictedLabel");
        double transformSeconds = stopwatch.Elapsed.TotalSeconds;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Fit: {files.Count} images x 3 epochs in {fitSeconds:F1} s ({files.Count * 3 / fitSeconds:F1} images/s incl. base load); Transform + Evaluate: {files.Count / transformSeconds:F1} images/s at {ImageSide} px"));

        // The classes differ in dominant colour and pattern: a trained head separates the training images; chance is 1/3.
        Assert.IsGreaterThanOrEqualTo(0.9, metrics.MacroAccuracy, $"macro accuracy {metrics.MacroAccuracy}");
        var rows = Predictions(chain, data);
        for (int i = 0; i < rows.Count; i++)
        {
            Assert.HasCount(3, rows[i].Score);
            Assert.AreEqual(1.0, rows[i].Score.Sum(), 1e-5, "softmax probabilities sum to 1 (float32 rounding)");
        }

        var lora = LoraOf(chain);
        Assert.AreEqual(LoraTaskKind.MulticlassClassification, lora.Task);
        Assert.AreEqual(ImageSide, lora.ImageSize);

        // ML.NET's ResNet-18 has [2, 2, 2, 3] blocks: 9 blocks × 2 convolutions match the default target regex.
        Assert.HasCount(18, lora.AdaptedModules);
        Assert.IsTrue(lora.AdaptedModules.All(m => Regex.IsMatch(m, $"^(?:{LoraImageFineTuningOptions.DefaultTargetModules})$")), string.Join(", ", lora.AdaptedModules));
        long expected = lora.Model.Model.named_parameters().Where(p => LoraImageModel.IsAdapterTensor(p.name)).Sum(p => p.parameter.numel());
        Assert.AreEqual(expected, lora.TrainableParameterCount, "only LoRA factors and the head train");
        Assert.AreEqual(512 * 3 + 3, lora.Model.Model.named_parameters().Where(p => p.name.StartsWith("fc.", StringComparison.Ordinal)).Sum(p => p.parameter.numel()));
    }

    [TestMethod]
    public void Transform_MLImageColumnFromLoadImages_EqualsRawBytes()
    {
        var paths = context.Data.LoadFromEnumerable(files.Select(f => new ImagePathRow { ImagePath = Path.GetFileName(f.Path), Label = f.Label }).ToList());
        var images = context.Transforms.LoadImages("Image", Path.Combine(root, "images"), "ImagePath").Fit(paths).Transform(paths);
        Assert.IsInstanceOfType<ImageDataViewType>(images.Schema["Image"].Type);
        var fromImages = Predictions(chain, images);
        var fromBytes = Predictions(chain, data);
        Assert.HasCount(files.Count, fromImages);
        for (int i = 0; i < files.Count; i++)
        {
            Assert.AreEqual(fromBytes[i].PredictedLabel, fromImages[i].PredictedLabel, $"row {i}");
            CollectionAssert.AreEqual(fromBytes[i].Score, fromImages[i].Score, new Tolerance(0f), $"row {i}: the same decoder reads both columns");
        }
    }

    [TestMethod]
    public void PredictionEngine_OneImageAtATime_SameAsBatchedTransform()
    {
        var batched = Predictions(chain, data);
        using var engine = context.Model.CreatePredictionEngine<ImageBytesRow, ImagePrediction>(chain);
        for (int i = 0; i < 9; i++)
        {
            var single = engine.Predict(new ImageBytesRow { Image = File.ReadAllBytes(files[i].Path) });
            Assert.AreEqual(batched[i].PredictedLabel, single.PredictedLabel, $"row {i}");

            // Batches of 8 and of 1 run different kernels: float32 rounding only.
            CollectionAssert.AreEqual(batched[i].Score, single.Score, new Tolerance(1e-5f), $"row {i}");
        }
    }

    [TestMethod]
    public void TrainingStep_GradientsReachOnlyLoraAndHead_BatchNormStatisticsUnchanged()
    {
        var label = LabelInfo.Create(LoraTaskKind.MulticlassClassification, 3, null, null);
        var settings = new ImageAdapterSettings(4, 8, 0, LoraImageFineTuningOptions.DefaultTargetModules, false, ImageSide, 0, 1);
        using var model = LoraImageModel.Create(ImageBase.From(null, null), CPU, label, settings, seed: 11, mergedCopy: false);
        using var scope = NewDisposeScope();
        var statistics = model.Model.named_buffers().ToDictionary(b => b.name, b => b.buffer.clone());
        var rows = data.GetColumn<byte[]>("Image").Take(4).Select((bytes, i) => new ImageRow(Decode(bytes), i % 3, 0)).ToList();
        model.Model.train();
        var loss = label.Task.Loss(model.Forward(rows), rows, model.Scaling, CPU);
        loss.backward();

        foreach (var (name, parameter) in model.Model.named_parameters())
        {
            bool adapter = LoraImageModel.IsAdapterTensor(name);
            Assert.AreEqual(adapter, parameter.requires_grad, name);
            if (!adapter)
            {
                Assert.IsNull(parameter.grad, $"{name}: frozen base (conv or BatchNorm) gets no gradient");
            }
            else if (!name.EndsWith(".lora_A", StringComparison.Ordinal))
            {
                // lora_B starts at zero, so lora_A's first gradient is zero too (∂L/∂A = Bᵀ…); B and the head get a real one.
                Assert.IsGreaterThan(0.0, parameter.grad!.abs().sum().item<float>(), $"{name} has a gradient");
            }
        }

        foreach (var (name, buffer) in model.Model.named_buffers())
        {
            Assert.IsTrue(buffer.eq(statistics[name]).all().item<bool>(), $"{name}: BatchNorm keeps its stored statistics in training mode");
        }
    }

    [TestMethod]
    public void MergedModel_FoldedBatchNorm_SamePredictionsAsUnmergedWithBatchNorm_SharedBaseUnchanged()
    {
        var trained = LoraOf(chain).Model;
        Assert.IsFalse(trained.MergedCopy, "the fitted model runs LoRA unmerged on the shared base");
        var state = trained.AdapterState();
        try
        {
            var images = data.GetColumn<byte[]>("Image").Take(6).Select(Decode).ToList();
            var before = trained.Predict(images);
            using var merged = LoraImageModel.Create(trained.Base, CPU, trained.Label, trained.Settings, seed: 1, mergedCopy: true);
            using var unmerged = LoraImageModel.Create(trained.Base, CPU, trained.Label, trained.Settings, seed: 2, mergedCopy: false);
            Assert.IsTrue(merged.MergedCopy, "on the CPU a private merged copy is honoured");
            merged.LoadAdapterState(state);
            unmerged.LoadAdapterState(state);
            merged.Model.eval();
            unmerged.Model.eval();
            // The reference runs every convolution and BatchNorm separately; the merged model folds each BN into its kernel.
            unmerged.Model.FoldBatchNorm = false;
            var a = merged.Predict(images);
            var b = unmerged.Predict(images);
            Assert.AreEqual(22, merged.Model.Folds.Count(f => f.FoldCount == 1), "all 22 conv → BN pairs folded once");
            Assert.AreEqual(0, unmerged.Model.Folds.Sum(f => f.FoldCount));

            // W + ΔW and the BN scale in one kernel against W, the low-rank branch and BN: float32 rounding through 20 layers.
            CollectionAssert.AreEqual(b, a, new Tolerance(1e-4f));
            // The fitted model folds the BatchNorms of its unadapted convolutions (the shortcuts) for inference; b folds none.
            CollectionAssert.AreEqual(before, b, new Tolerance(1e-4f), "the rebuilt unmerged model predicts what the fitted one does");

            // Merging wrote into the merged model's private copies only: the shared base, and so the fitted model, is unchanged.
            CollectionAssert.AreEqual(before, trained.Predict(images), new Tolerance(0f));
        }
        finally
        {
            LoraTrainer.DisposeState(state);
        }
    }

    [TestMethod]
    public void SaveLoad_FreshProcess_IdenticalPredictionsAndOnlyAdapterStored()
    {
        string modelPath = Path.Combine(root, "image-model.zip");
        context.Model.Save(chain, data.Schema, modelPath);
        long size = new FileInfo(modelPath).Length;
        long baseSize = new FileInfo(LoraOf(chain).BaseModelPath).Length;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"model zip {size} bytes; base ONNX {baseSize} bytes ({(double)baseSize / size:F0}x)"));

        // r = 8 on 18 convolutions (356,864 factors) and the head (1,539), float32: 1.4 MB; the base's weights are never stored.
        Assert.IsLessThan(1_600_000L, size);
        Assert.IsGreaterThan(1_300_000L, size);

        var expected = Predictions(chain, data);
        using (var loaded = (IDisposable)context.Model.Load(modelPath, out _))
        {
            var again = Predictions((ITransformer)loaded, data);
            for (int i = 0; i < expected.Count; i++)
            {
                CollectionAssert.AreEqual(expected[i].Score, again[i].Score, new Tolerance(0f), $"row {i}: bitwise equal after an in-process load");
            }
        }

        string listPath = Path.Combine(root, "image-list.txt");
        string outPath = Path.Combine(root, "image-scores.txt");
        File.WriteAllLines(listPath, files.Select(f => f.Path));
        var result = LoadCheckRunner.Run("--images", modelPath, listPath, outPath);
        Assert.AreEqual(0, result.ExitCode, result.Output);
        var lines = File.ReadAllLines(outPath);
        Assert.HasCount(files.Count, lines);
        for (int i = 0; i < lines.Length; i++)
        {
            var parts = lines[i].Split('\t');
            Assert.AreEqual(expected[i].PredictedLabel, parts[0]);
            var bits = parts[1].Split(',').Select(h => BitConverter.Int32BitsToSingle(int.Parse(h, NumberStyles.HexNumber, CultureInfo.InvariantCulture))).ToArray();
            CollectionAssert.AreEqual(expected[i].Score, bits, new Tolerance(0f), $"row {i}: bitwise equal in a fresh process on the CPU");
        }
    }

    [TestMethod]
    [DataRow("corrupt", "not an image")]
    [DataRow("empty", "is empty")]
    public void Transform_BadImageBytes_ErrorNamesColumnAndRow(string kind, string what)
    {
        var rows = files.Take(4).Select(f => new ImageBytesRow { Image = File.ReadAllBytes(f.Path), Label = f.Label }).ToList();
        rows[2].Image = kind == "corrupt" ? rows[2].Image.Take(40).Concat(new byte[64]).ToArray() : [];
        var scored = chain.Transform(context.Data.LoadFromEnumerable(rows));
        var e = Assert.ThrowsExactly<InvalidDataException>(() => scored.GetColumn<float[]>("Score").ToList());
        StringAssert.Contains(e.Message, "Image column 'Image', row 2");
        StringAssert.Contains(e.Message, what);
    }

    [TestMethod]
    public void Fit_CorruptImageInTrainingData_ErrorNamesColumnAndRow()
    {
        var rows = files.Take(6).Select(f => new ImageBytesRow { Image = File.ReadAllBytes(f.Path), Label = f.Label }).ToList();
        rows[4].Image = [1, 2, 3, 4, 5];
        var ml = new MLContext(seed: 1);
        var options = FastOptions();
        options.MaxEpochs = 1;
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Pipeline(ml, options).Fit(ml.Data.LoadFromEnumerable(rows)));
        StringAssert.Contains(e.Message, "Image column 'Image', row 4");
    }

    [TestMethod]
    public void TransformAndFit_WrongTypedImageColumn_ErrorNamesColumnAndTypes()
    {
        var text = context.Data.LoadFromEnumerable(new[] { new TextImageRow { Image = "cat.png", Label = "red" } });
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => chain.Transform(text));
        StringAssert.Contains(e.Message, "image column 'Image' has type String");
        StringAssert.Contains(e.Message, "MLImage");

        var ml = new MLContext(seed: 1);
        var fit = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => Pipeline(ml).Fit(text));
        StringAssert.Contains(fit.Message, "image column 'Image' has type String");
        var shape = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => Pipeline(ml).GetOutputSchema(MlNetHost.ShapeOf(text.Schema)));
        StringAssert.Contains(shape.Message, "image column 'Image'");
    }

    [TestMethod]
    public void Transform_MissingInMemoryMLImage_ErrorNamesColumnAndRow()
    {
        using var first = MLImage.CreateFromFile(files[0].Path);
        var rows = new[] { new InMemoryImageRow { Image = first, Label = "red" }, new InMemoryImageRow { Image = null, Label = "red" } };
        var view = context.Data.LoadFromEnumerable(rows);
        Assert.IsInstanceOfType<ImageDataViewType>(view.Schema["Image"].Type);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => chain.Transform(view).GetColumn<float[]>("Score").ToList());
        StringAssert.Contains(e.Message, "Image column 'Image', row 1");
        StringAssert.Contains(e.Message, "has no image");
    }

    [TestMethod]
    public void ImageColumnReader_GreyPng_BecomesRgbWithEqualChannelsResized()
    {
        var view = context.Data.LoadFromEnumerable(new[] { new ImageBytesRow { Image = TestImageFiles.GreyPng(20, 10), Label = "red" } });
        var reader = ImageColumnReader.For(view.Schema, "Image", 32, "input");
        using var cursor = view.GetRowCursor(view.Schema);
        var read = reader.CreateReader(cursor);
        Assert.IsTrue(cursor.MoveNext());
        var rgb = read();
        Assert.HasCount(3 * 32 * 32, rgb);
        int plane = 32 * 32;
        for (int i = 0; i < plane; i++)
        {
            Assert.AreEqual(rgb[i], rgb[plane + i], $"pixel {i}: G = R");
            Assert.AreEqual(rgb[i], rgb[(2 * plane) + i], $"pixel {i}: B = R");
        }

        // The ramp runs from black on the left to white on the right, in every row.
        Assert.IsLessThan(20, (int)rgb[0]);
        Assert.IsGreaterThan(235, (int)rgb[31]);
        Assert.AreEqual(rgb[5], rgb[(31 * 32) + 5], "rows are equal");
    }

    [TestMethod]
    public void ImageColumnReader_AlphaOnlyPng_DecodedAsAlpha8_ReadsAsBlack()
    {
        // The colour type furthest from RGB that the decoder produces: an alpha-mask PNG decodes to Alpha8, which SkiaSharp
        // 2.88 still converts to RGBA (black, with the mask as alpha), so the reader's "cannot be converted" error has no
        // input that reaches it (docs/IMAGES.md).
        var png = TestImageFiles.AlphaOnlyPng(16, 12);
        using (var bitmap = SkiaSharp.SKBitmap.Decode(png))
        {
            Assert.AreEqual(SkiaSharp.SKColorType.Alpha8, bitmap.ColorType, "the decoder reads the file as an alpha mask");
        }

        var rgb = Decode(png);
        Assert.HasCount(3 * ImageSide * ImageSide, rgb);
        Assert.IsTrue(rgb.All(v => v == 0), "alpha is dropped: an alpha mask has no colour");
    }

    /// <summary>Decodes one encoded image to the model's input, as the transformer does.</summary>
    private static byte[] Decode(byte[] encoded)
    {
        var view = context.Data.LoadFromEnumerable(new[] { new ImageBytesRow { Image = encoded } });
        using var cursor = view.GetRowCursor(view.Schema);
        var read = ImageColumnReader.For(view.Schema, "Image", ImageSide, "input").CreateReader(cursor);
        Assert.IsTrue(cursor.MoveNext());
        return read();
    }

    private sealed class Tolerance(float tolerance) : System.Collections.IComparer
    {
        public int Compare(object? x, object? y) => Math.Abs((float)x! - (float)y!) <= tolerance ? 0 : 1;
    }

    public sealed class ImageBytesRow
    {
        public byte[] Image { get; set; } = [];

        public string Label { get; set; } = string.Empty;
    }

    public sealed class ImagePathRow
    {
        public string ImagePath { get; set; } = string.Empty;

        public string Label { get; set; } = string.Empty;
    }

    public sealed class TextImageRow
    {
        public string Image { get; set; } = string.Empty;

        public string Label { get; set; } = string.Empty;
    }

    public sealed class InMemoryImageRow
    {
        [ImageType(48, 48)]
        public MLImage? Image { get; set; }

        public string Label { get; set; } = string.Empty;
    }

    public sealed class ImagePrediction
    {
        public float[] Score { get; set; } = [];

        public string PredictedLabel { get; set; } = string.Empty;
    }
}
