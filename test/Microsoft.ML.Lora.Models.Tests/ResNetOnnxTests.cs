using Microsoft.ML.Lora.Models.Vision;
using Microsoft.ML.OnnxRuntime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// The ML.NET ResNet-18 (NuGet Microsoft.ML.DnnImageFeaturizer.ResNet18, copied to the output folder by its build props)
/// imported into TorchSharp, against ONNX Runtime running the package's preprocessing and model graphs at their fixed batch
/// of 1 on the same images. Loaded once for the class (64 MB).
/// </summary>
[TestClass]
public sealed class ResNetOnnxTests
{
    private static ResNet model = null!;
    private static ImageNormalization normalization = null!;

    [ClassInitialize]
    public static void Load(TestContext context)
    {
        model = ResNet.FromOnnx(DnnImageModels.ResNet18Path());
        normalization = ImageNormalization.FromOnnx(DnnImageModels.ResNetPreprocessPath());
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        model?.Dispose();
        normalization?.Dispose();
    }

    [TestMethod]
    public void FromOnnx_MlNetResNet18_HasTorchvisionLayoutWithoutHead()
    {
        var sd = model.state_dict();
        // CNTK's ResNet-18 has [2, 2, 2, 3] blocks (torchvision's: [2, 2, 2, 2]): 1 + 9 × 2 + 3 shortcuts = 22 convolutions.
        Assert.AreEqual(22, model.modules().OfType<Conv2d>().Count());
        Assert.AreEqual(22, model.modules().OfType<BatchNorm2d>().Count());
        CollectionAssert.AreEqual(new long[] { 512, 512, 3, 3 }, sd["layer4.2.conv2.weight"].shape);
        Assert.IsFalse(sd.ContainsKey("layer4.3.conv1.weight"));
        Assert.IsFalse(sd.ContainsKey("layer3.2.conv1.weight"));
        CollectionAssert.AreEqual(new long[] { 64, 3, 7, 7 }, sd["conv1.weight"].shape);
        CollectionAssert.AreEqual(new long[] { 512, 512, 3, 3 }, sd["layer4.1.conv2.weight"].shape);
        CollectionAssert.AreEqual(new long[] { 256, 128, 1, 1 }, sd["layer3.0.downsample.0.weight"].shape);
        CollectionAssert.AreEqual(new long[] { 128 }, sd["layer2.0.downsample.1.running_var"].shape);
        Assert.IsFalse(sd.ContainsKey("layer1.0.downsample.0.weight"));
        Assert.IsFalse(sd.ContainsKey("fc.weight"));

        // torchvision's resnet18 without its fc has 11,176,512 parameters; the extra block adds 2 × (512·512·9 + 2·512).
        Assert.AreEqual(11_176_512L + 4_720_640L, model.parameters().Sum(p => p.numel()));
        Assert.AreEqual(512L, model.FeatureSize);
        Assert.AreEqual(0L, model.NumClasses);
        Assert.AreEqual(32L, model.TotalStride);
        Assert.AreEqual(224L, model.NativeImageSize);
    }

    [TestMethod]
    public void ImageNormalization_PreprocessGraph_IsBgrMinusMeanImageAsOnnxRuntime()
    {
        CollectionAssert.AreEqual(new long[] { 2, 1, 0 }, normalization.ChannelOrder.ToArray());
        CollectionAssert.AreEqual(new long[] { 3, 224, 224 }, normalization.MeanImage.shape);
        var channelMeans = TestData.ToArray(normalization.MeanImage.mean([1, 2]));
        Assert.AreEqual(103.06, channelMeans[0], 0.01, "B");
        Assert.AreEqual(115.90, channelMeans[1], 0.01, "G");
        Assert.AreEqual(123.15, channelMeans[2], 0.01, "R");

        using var scope = NewDisposeScope();
        var images = TestImages.Colour(1, 224);
        using var session = new InferenceSession(DnnImageModels.ResNetPreprocessPath());
        var expected = RunBatchOfOne(session, images[0].unsqueeze(0));

        // The same float32 subtraction on the same values: exact.
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(normalization.Apply(images), tensor(expected, [1, 3, 224, 224])));
    }

    [TestMethod]
    public void FromOnnx_RealImages_MatchesOnnxRuntimeWithin1e4()
    {
        using var scope = NewDisposeScope();
        var images = cat([TestImages.Fashion(3, 224), TestImages.Colour(2, 224)], 0);
        using var prep = new InferenceSession(DnnImageModels.ResNetPreprocessPath());
        using var resnet = new InferenceSession(DnnImageModels.ResNet18Path());
        var expected = new List<Tensor>();
        for (long i = 0; i < images.shape[0]; i++)
        {
            var input = RunBatchOfOne(prep, images[i].unsqueeze(0));
            expected.Add(tensor(RunBatchOfOne(resnet, tensor(input, [1, 3, 224, 224])), [1, 512]));
        }

        Tensor actual;
        using (no_grad())
        {
            actual = model.forward(normalization.Apply(images));
        }

        var reference = cat(expected, 0);
        double diff = TestData.MaxAbsDiff(actual, reference);
        double scale = reference.abs().max().item<float>();
        Console.WriteLine($"ResNet-18 vs ONNX Runtime on {images.shape[0]} images at 224: max |difference| {diff:E2}, max |feature| {scale:F3}");

        // Float32 convolutions summed in different orders over 20 layers: differences of order 1e-6 relative; features reach
        // a few units, so 1e-4 absolute leaves a margin while any wrong padding, pooling or mapping gives differences > 0.1.
        Assert.IsLessThan(1e-4, diff);
        Assert.IsGreaterThan(1.0, scale, "the features are not trivially small");
    }

    [TestMethod]
    public void Inference_FoldedBatchNorm_EqualsConvThenBatchNormOnRealImagesWithin1e4()
    {
        using var scope = NewDisposeScope();
        var images = normalization.Apply(cat([TestImages.Fashion(3, 224), TestImages.Colour(2, 224)], 0));
        Tensor folded, unfolded;
        using (no_grad())
        {
            folded = model.forward(images);
            Assert.AreEqual(22, model.Folds.Count(f => f.FoldCount > 0), "stem, 9 × 2 block convolutions, 3 shortcuts");
            try
            {
                model.FoldBatchNorm = false;
                unfolded = model.forward(images);
            }
            finally
            {
                model.FoldBatchNorm = true;
            }
        }

        double diff = TestData.MaxAbsDiff(folded, unfolded);
        Console.WriteLine($"ResNet-18 with BatchNorm folded into the kernels vs conv then BN, 5 images at 224: max |difference| {diff:E2}");

        // W·s instead of BN(conv(x)): float32 rounding in another order through 20 layers, features up to ~20.
        Assert.IsLessThan(1e-4, diff);
        Assert.IsGreaterThan(0.0, diff, "the folded path really ran (bitwise equality would mean it did not)");
    }

    [TestMethod]
    public void ForwardFeatures_112Pixels_GlobalPoolGivesOneVectorPerImage()
    {
        using var scope = NewDisposeScope();
        // 112 is not a multiple of 32: the last stage gets a 7×7 map, which the graph's own padding could not halve consistently.
        var images = normalization.Apply(TestImages.Fashion(2, 112));
        using var noGrad = no_grad();
        var features = model.forward(images);
        CollectionAssert.AreEqual(new long[] { 2, 512 }, features.shape);
        Assert.IsTrue(features.isfinite().all().item<bool>());

        // Different images give different features (the two fixtures are a boot and a pullover).
        Assert.IsGreaterThan(0.1, TestData.MaxAbsDiff(features[0], features[1]));
    }

    [TestMethod]
    public void ImageNormalization_112Pixels_SubtractsMeanImageResizedToTheInput()
    {
        using var scope = NewDisposeScope();
        var grey = full(new long[] { 1, 3, 112, 112 }, 128f);
        var normalized = normalization.Apply(grey);
        CollectionAssert.AreEqual(new long[] { 1, 3, 112, 112 }, normalized.shape);

        // Bilinear resizing keeps each channel's average within a fraction of a grey level.
        var channelMeans = TestData.ToArray(normalized.mean([0, 2, 3]));
        Assert.AreEqual(128 - 103.06, channelMeans[0], 0.5, "B");
        Assert.AreEqual(128 - 115.90, channelMeans[1], 0.5, "G");
        Assert.AreEqual(128 - 123.15, channelMeans[2], 0.5, "R");
    }

    [TestMethod]
    public void FromOnnx_GraphThatIsNotAResNet_ThrowsNamingWhereTheWalkStopped()
    {
        var e = Assert.ThrowsExactly<InvalidDataException>(() => ResNet.FromOnnx(DnnImageModels.ResNetPreprocessPath()));
        StringAssert.Contains(e.Message, "expected one Conv reading 'OriginalInput', found 0");
        var e2 = Assert.ThrowsExactly<InvalidDataException>(() => ImageNormalization.FromOnnx(DnnImageModels.ResNet18Path()));
        StringAssert.Contains(e2.Message, "no single Sub node");
    }

    private static float[] RunBatchOfOne(InferenceSession session, Tensor input)
    {
        float[] data = TestData.ToArray(input);
        using var value = OrtValue.CreateTensorValueFromMemory(data, [.. input.shape]);
        using var options = new RunOptions();
        using var outputs = session.Run(options, new Dictionary<string, OrtValue> { [session.InputNames[0]] = value }, [session.OutputNames[0]]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }
}
