using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class OnnxImportTests
{
    private static string WriteOnnx(BertModel model, TinyOnnxExport export)
    {
        string dir = TestData.NewTempDirectory();
        File.WriteAllBytes(Path.Combine(dir, "model.onnx"), export.Build(model, dir));
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), TestData.TinyVocab);
        return dir;
    }

    private static LoadedPretrainedModel Load(string dir, int? heads = null) =>
        PretrainedModel.FromOnnx(Path.Combine(dir, "model.onnx"), Path.Combine(dir, "vocab.txt"), heads).Load();

    [TestMethod]
    [DataRow(false, false, "gelu")]
    [DataRow(true, false, "gelu_new")]
    [DataRow(false, true, "relu")]
    [DataRow(true, true, "gelu")]
    public void Import_Float32_MapsTransposedMatMulWeights_ExactlyAndInfersConfig(bool pooler, bool typedFields, string act)
    {
        using var model = TestData.TinyModel(seed: 50, pooler: pooler, act: act, layers: 3);
        string dir = WriteOnnx(model, new TinyOnnxExport { TypedFields = typedFields });
        using var loaded = Load(dir);
        var c = loaded.Model.Config;
        Assert.AreEqual(3, c.NumHiddenLayers);
        Assert.AreEqual(16, c.HiddenSize);
        Assert.AreEqual(4, c.NumAttentionHeads);
        Assert.AreEqual(32, c.IntermediateSize);
        Assert.AreEqual(32, c.MaxPositionEmbeddings);
        Assert.AreEqual(TestData.TinyVocab.Length, c.VocabSize);
        Assert.AreEqual(act, c.HiddenAct);
        Assert.AreEqual(1e-12, c.LayerNormEps);
        Assert.AreEqual(pooler, loaded.Model.HasPoolingLayer);

        // Every weight equal bit for bit, so the fingerprint equals the original model's.
        Assert.AreEqual(WeightsFingerprint.Compute(model.BaseStateDict()), loaded.WeightsSha256);
        using var scope = NewDisposeScope();
        var (ids, mask, types) = TestData.TinyBatch(seed: 51);
        using var noGrad = no_grad();
        CollectionAssert.AreEqual(TestData.ToArray(model.forward(ids, mask, types)), TestData.ToArray(loaded.Model.forward(ids, mask, types)));
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Import_Float16_ConvertsEachValueExactly(bool typedFields)
    {
        using var model = TestData.TinyModel(seed: 52, pooler: true);
        string dir = WriteOnnx(model, new TinyOnnxExport { Float16 = true, TypedFields = typedFields });
        using var loaded = Load(dir);
        var sd = loaded.Model.state_dict();
        foreach (var (key, original) in model.BaseStateDict())
        {
            // float16 → float32 is exact, so the only difference is the float32 → float16 rounding of the export.
            using var rounded = original.to_type(ScalarType.Float16).to_type(ScalarType.Float32);
            Assert.AreEqual(0.0, TestData.MaxAbsDiff(sd[key], rounded), key);
        }
    }

    [TestMethod]
    public void Import_BertPrefixAndConstantShapeTensor_Loads()
    {
        using var model = TestData.TinyModel(seed: 53, pooler: true);
        string dir = WriteOnnx(model, new TinyOnnxExport { Prefix = "bert.", ConstantShapeTensor = true });
        using var loaded = Load(dir);
        Assert.AreEqual(4, loaded.Model.Config.NumAttentionHeads);
        Assert.AreEqual(WeightsFingerprint.Compute(model.BaseStateDict()), loaded.WeightsSha256);
    }

    [TestMethod]
    public void Import_HeadsNotInGraph_RequiresNumAttentionHeads()
    {
        using var model = TestData.TinyModel(seed: 54);
        string dir = WriteOnnx(model, new TinyOnnxExport { HeadsInGraph = false });
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Load(dir));
        StringAssert.Contains(e.Message, "numAttentionHeads");
        using var loaded = Load(dir, heads: 4);
        Assert.AreEqual(4, loaded.Model.Config.NumAttentionHeads);
        Assert.AreEqual(WeightsFingerprint.Compute(model.BaseStateDict()), loaded.WeightsSha256);
    }

    [TestMethod]
    public void Import_UnnamedBias_ReportsTheMissingWeightAndBiasByName()
    {
        using var model = TestData.TinyModel(seed: 55);
        string dir = WriteOnnx(model, new TinyOnnxExport { UnnamedBiases = ["encoder.layer.1.attention.self.key.bias"] });
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Load(dir));
        StringAssert.Contains(e.Message, "Missing (2): encoder.layer.1.attention.self.key.bias, encoder.layer.1.attention.self.key.weight");
    }

    [TestMethod]
    public void Import_ExternalData_ReadsTensorFromSideFile()
    {
        using var model = TestData.TinyModel(seed: 56);
        string dir = WriteOnnx(model, new TinyOnnxExport { ExternalWordEmbeddings = "weights.bin" });
        Assert.IsTrue(File.Exists(Path.Combine(dir, "weights.bin")));
        using var loaded = Load(dir);
        Assert.AreEqual(WeightsFingerprint.Compute(model.BaseStateDict()), loaded.WeightsSha256);
    }

    [TestMethod]
    public void Import_NotOnnx_ThrowsNamingTheFile()
    {
        string dir = TestData.NewTempDirectory();
        string path = Path.Combine(dir, "model.onnx");
        File.WriteAllBytes(path, [0xFF, 0xFF, 0xFF, 0x01, 0x02]);
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), TestData.TinyVocab);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Load(dir));
        StringAssert.Contains(e.Message, path);
    }
}
