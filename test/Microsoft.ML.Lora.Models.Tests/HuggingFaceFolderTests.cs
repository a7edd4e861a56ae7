using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class HuggingFaceFolderTests
{
    private static float[] Output(BertModel model, int seed)
    {
        using var scope = NewDisposeScope();
        var (ids, mask, types) = TestData.TinyBatch(seed);
        using var noGrad = no_grad();
        return TestData.ToArray(model.forward(ids, mask, types));
    }

    [TestMethod]
    public void SaveHuggingFace_TinyModel_ReloadsBitwiseIdentical_WithSameFingerprint()
    {
        using var model = TestData.TinyModel(seed: 40, pooler: true);
        string dir = TestData.SaveTinyFolder(model);
        CollectionAssert.AreEquivalent(new[] { "config.json", "model.safetensors", "vocab.txt" }, Directory.GetFiles(dir).Select(Path.GetFileName).ToArray());
        using var loaded = PretrainedModel.FromHuggingFaceFolder(dir).Load();
        Assert.IsTrue(loaded.Model.HasPoolingLayer);
        Assert.AreEqual(model.Config.ToJson(), loaded.Model.Config.ToJson());
        CollectionAssert.AreEqual(Output(model, 41), Output(loaded.Model, 41));
        Assert.AreEqual(WeightsFingerprint.Compute(model.BaseStateDict()), loaded.WeightsSha256);
        Assert.AreEqual(PretrainedModelKind.HuggingFaceFolder, loaded.Source.Kind);
    }

    [TestMethod]
    public void SaveHuggingFace_SafetensorsHeader_IsHuggingFaceCompatible()
    {
        using var model = TestData.TinyModel(seed: 42, layers: 1);
        string dir = TestData.SaveTinyFolder(model);
        byte[] bytes = File.ReadAllBytes(Path.Combine(dir, "model.safetensors"));
        long headerLength = BitConverter.ToInt64(bytes, 0);
        Assert.AreEqual(0, headerLength % 8, "header padded to 8 bytes");
        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)headerLength));
        Assert.AreEqual("pt", header.RootElement.GetProperty("__metadata__").GetProperty("format").GetString());
        var query = header.RootElement.GetProperty("encoder.layer.0.attention.self.query.weight");
        Assert.AreEqual("F32", query.GetProperty("dtype").GetString());
        CollectionAssert.AreEqual(new long[] { 16, 16 }, query.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray());
        long total = header.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__")
            .Sum(p => p.Value.GetProperty("data_offsets")[1].GetInt64() - p.Value.GetProperty("data_offsets")[0].GetInt64());
        Assert.AreEqual(bytes.Length - 8 - headerLength, total, "data section holds exactly the tensors");
    }

    [TestMethod]
    public void Load_ShardedWithBertPrefixAndHeadKeys_LoadsEncoderIdentically()
    {
        using var model = TestData.TinyModel(seed: 43);
        string dir = TestData.SaveTinyFolder(model);
        File.Delete(Path.Combine(dir, "model.safetensors"));
        var all = model.BaseStateDict();
        var keys = all.Keys.ToList();
        var shard1 = keys.Take(keys.Count / 2).ToDictionary(k => "bert." + k, k => all[k]);
        var shard2 = keys.Skip(keys.Count / 2).ToDictionary(k => "bert." + k, k => all[k]);
        using var headWeight = randn(3, 16);
        using var positionIds = arange(32, dtype: ScalarType.Int64).unsqueeze(0);
        shard2["classifier.weight"] = headWeight;
        shard2["bert.embeddings.position_ids"] = positionIds;
        SafeTensors.Write(Path.Combine(dir, "model-00001-of-00002.safetensors"), shard1, HuggingFaceFolder.SafetensorsMetadata, ScalarType.Float32);
        SafeTensors.Write(Path.Combine(dir, "model-00002-of-00002.safetensors"), shard2, HuggingFaceFolder.SafetensorsMetadata, ScalarType.Float32);
        var map = shard1.Keys.ToDictionary(k => k, _ => "model-00001-of-00002.safetensors")
            .Concat(shard2.Keys.ToDictionary(k => k, _ => "model-00002-of-00002.safetensors"))
            .ToDictionary(p => p.Key, p => p.Value);
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = map }));

        using var loaded = PretrainedModel.FromHuggingFaceFolder(dir).Load();
        CollectionAssert.AreEqual(Output(model, 44), Output(loaded.Model, 44));
        Assert.AreEqual(WeightsFingerprint.Compute(all), loaded.WeightsSha256);
    }

    [TestMethod]
    public void Load_Float16Safetensors_ConvertsToFloat32()
    {
        using var model = TestData.TinyModel(seed: 45);
        string dir = TestData.SaveTinyFolder(model);
        var half = model.BaseStateDict().ToDictionary(p => p.Key, p => p.Value.to_type(ScalarType.Float16));
        using (var stream = File.Create(Path.Combine(dir, "model.safetensors")))
        {
            Safetensors.SaveStateDict(stream, half);
        }

        using var loaded = PretrainedModel.FromHuggingFaceFolder(dir).Load();
        var sd = loaded.Model.state_dict();
        foreach (var (key, value) in half)
        {
            Assert.AreEqual(ScalarType.Float32, sd[key].dtype);
            Assert.AreEqual(0.0, TestData.MaxAbsDiff(sd[key], value.to_type(ScalarType.Float32)), key);
        }
    }

    [TestMethod]
    public void SaveHuggingFace_Bfloat16Model_StoresFloat32CopiesAndLeavesModelInBfloat16()
    {
        using var model = TestData.TinyModel(seed: 47, layers: 1);
        model.to(ScalarType.BFloat16);
        string dir = TestData.SaveTinyFolder(model);

        var (stored, metadata) = SafeTensors.Read(Path.Combine(dir, "model.safetensors"));
        try
        {
            Assert.AreEqual("pt", metadata["format"]);
            var weights = model.BaseStateDict();
            CollectionAssert.AreEquivalent(weights.Keys.ToList(), stored.Keys.ToList());
            foreach (var (key, value) in weights)
            {
                Assert.AreEqual(ScalarType.BFloat16, value.dtype, $"{key}: the model keeps its dtype");
                Assert.AreEqual(ScalarType.Float32, stored[key].dtype, key);
                // bfloat16 → float32 is exact, so the stored values equal the model's.
                Assert.AreEqual(0.0, TestData.MaxAbsDiff(stored[key], value.to_type(ScalarType.Float32)), key);
            }
        }
        finally
        {
            foreach (var tensor in stored.Values)
            {
                tensor.Dispose();
            }
        }
    }

    [TestMethod]
    public void Load_PyTorchBin_WhenNoSafetensors_LoadsIdentically()
    {
        using var model = TestData.TinyModel(seed: 49);
        string dir = TestData.SaveTinyFolder(model);
        File.Delete(Path.Combine(dir, "model.safetensors"));
        var table = new System.Collections.Hashtable();
        foreach (var (key, value) in model.BaseStateDict())
        {
            table["bert." + key] = value;
        }

        PyTorchPickler.PickleStateDict(Path.Combine(dir, "pytorch_model.bin"), table);
        using var loaded = PretrainedModel.FromHuggingFaceFolder(dir).Load();
        CollectionAssert.AreEqual(Output(model, 50), Output(loaded.Model, 50));
    }

    [TestMethod]
    public void Load_WrongWeights_ListsMissingUnexpectedAndMismatchedKeys()
    {
        using var model = TestData.TinyModel(seed: 46);
        string dir = TestData.SaveTinyFolder(model);
        var sd = model.BaseStateDict().ToDictionary(p => p.Key, p => p.Value);
        sd.Remove("encoder.layer.1.output.dense.bias");
        sd.Remove("embeddings.LayerNorm.weight");
        using var extra = zeros(4);
        using var wrong = zeros(16, 8);
        sd["encoder.layer.2.attention.self.query.weight"] = extra;
        sd["encoder.layer.0.attention.self.key.weight"] = wrong;
        SafeTensors.Write(Path.Combine(dir, "model.safetensors"), sd, HuggingFaceFolder.SafetensorsMetadata, ScalarType.Float32);

        var e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedModel.FromHuggingFaceFolder(dir).Load());
        StringAssert.Contains(e.Message, dir);
        StringAssert.Contains(e.Message, "Missing (2): embeddings.LayerNorm.weight, encoder.layer.1.output.dense.bias");
        StringAssert.Contains(e.Message, "Unexpected (1): encoder.layer.2.attention.self.query.weight");
        StringAssert.Contains(e.Message, "encoder.layer.0.attention.self.key.weight (model [16, 16], weights [16, 8])");
    }

    [TestMethod]
    public void Load_MissingFiles_ThrowNamingTheFile()
    {
        using var model = TestData.TinyModel(seed: 47);
        string dir = TestData.SaveTinyFolder(model);
        File.Delete(Path.Combine(dir, "vocab.txt"));
        var e = Assert.ThrowsExactly<FileNotFoundException>(() => PretrainedModel.FromHuggingFaceFolder(dir).Load());
        StringAssert.Contains(e.Message, "vocab.txt");
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), TestData.TinyVocab);
        File.Delete(Path.Combine(dir, "model.safetensors"));
        e = Assert.ThrowsExactly<FileNotFoundException>(() => PretrainedModel.FromHuggingFaceFolder(dir).Load());
        StringAssert.Contains(e.Message, "model.safetensors");
        File.Delete(Path.Combine(dir, "config.json"));
        e = Assert.ThrowsExactly<FileNotFoundException>(() => PretrainedModel.FromHuggingFaceFolder(dir).Load());
        StringAssert.Contains(e.Message, "config.json");
        Assert.AreEqual("directory", Assert.ThrowsExactly<ArgumentException>(() => PretrainedModel.FromHuggingFaceFolder(Path.Combine(dir, "nope"))).ParamName);
    }

    [TestMethod]
    public void Load_TokenizerConfig_CasedVocabularyIsHonoured()
    {
        using var model = TestData.TinyModel(seed: 48);
        string dir = TestData.SaveTinyFolder(model);
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"do_lower_case\": false}");
        using var loaded = PretrainedModel.FromHuggingFaceFolder(dir).Load();
        Assert.IsFalse(loaded.Tokenizer.LowerCase);
        Assert.IsFalse(loaded.Tokenizer.StripAccents);
        CollectionAssert.AreEqual(new long[] { 2, 1, 11, 3 }, loaded.Tokenizer.Encode(["Hello world"], null, 8).InputIds, "'Hello' is not in the lower-case vocabulary");
    }

    [TestMethod]
    public void Load_TokenizerJsonOnly_UsesItsVocabularyAndNormalizer()
    {
        using var model = TestData.TinyModel(seed: 57);
        string dir = TestData.SaveTinyFolder(model);
        File.Delete(Path.Combine(dir, "vocab.txt"));
        var vocab = TestData.TinyVocab.Select((token, id) => (token, id)).Reverse().ToDictionary(p => p.token, p => p.id);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), JsonSerializer.Serialize(new
        {
            normalizer = new { type = "BertNormalizer", lowercase = true, strip_accents = (bool?)null },
            model = new { type = "WordPiece", unk_token = "[UNK]", vocab },
        }));
        using var loaded = PretrainedModel.FromHuggingFaceFolder(dir).Load();
        Assert.IsTrue(loaded.Tokenizer.LowerCase);
        Assert.IsTrue(loaded.Tokenizer.StripAccents);
        CollectionAssert.AreEqual(new long[] { 2, 10, 11, 3 }, loaded.Tokenizer.Encode(["Héllo WORLD"], null, 8).InputIds);
    }

    [TestMethod]
    public void WeightsFingerprint_FollowsItsDocumentedDefinition()
    {
        using var a = tensor(new float[] { 1.5f, -2f }, [1, 2]);
        using var b = tensor(new float[] { 3f });
        var bytes = new List<byte>();
        void Entry(string key, long[] shape, float[] values)
        {
            bytes.AddRange(Encoding.UTF8.GetBytes(key));
            bytes.Add(0);
            bytes.AddRange(BitConverter.GetBytes(shape.Length));
            foreach (long d in shape)
            {
                bytes.AddRange(BitConverter.GetBytes(d));
            }

            foreach (float v in values)
            {
                bytes.AddRange(BitConverter.GetBytes(v));
            }
        }

        Entry("a.weight", [1, 2], [1.5f, -2f]);
        Entry("b.bias", [1], [3f]);
        string expected = Convert.ToHexStringLower(SHA256.HashData(bytes.ToArray()));
        Assert.AreEqual(expected, WeightsFingerprint.Compute(new Dictionary<string, Tensor> { ["b.bias"] = b, ["a.weight"] = a }));

        using var c = tensor(new float[] { MathF.BitIncrement(3f) });
        Assert.AreNotEqual(expected, WeightsFingerprint.Compute(new Dictionary<string, Tensor> { ["b.bias"] = c, ["a.weight"] = a }));
    }

    [TestMethod]
    public void PretrainedModel_Json_RoundTrips()
    {
        Assert.AreEqual(PretrainedModel.MiniLmL6V2, PretrainedModel.FromJson(PretrainedModel.MiniLmL6V2.ToJson()));
        string dir = TestData.NewTempDirectory();
        string onnx = Path.Combine(dir, "m.onnx");
        string vocab = Path.Combine(dir, "vocab.txt");
        File.WriteAllText(onnx, "x");
        File.WriteAllText(vocab, "x");
        var descriptor = PretrainedModel.FromOnnx(onnx, vocab, numAttentionHeads: 4, lowerCase: false);
        var again = PretrainedModel.FromJson(descriptor.ToJson());
        Assert.AreEqual(descriptor, again);
        Assert.AreEqual(4, again.NumAttentionHeads);
        Assert.IsFalse(again.LowerCase);
        Assert.AreEqual("onnxPath", Assert.ThrowsExactly<ArgumentException>(() => PretrainedModel.FromOnnx(onnx + "x", vocab)).ParamName);
        Assert.AreEqual("vocabPath", Assert.ThrowsExactly<ArgumentException>(() => PretrainedModel.FromOnnx(onnx, vocab + "x")).ParamName);
        Assert.AreEqual("numAttentionHeads", Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => PretrainedModel.FromOnnx(onnx, vocab, 0)).ParamName);
        Assert.AreEqual("json", Assert.ThrowsExactly<ArgumentException>(() => PretrainedModel.FromJson("{}")).ParamName);
    }
}
