using System.Text.Json;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class BertConfigTests
{
    private const string MiniLmConfigJson = """
        {
          "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
          "architectures": ["BertModel"],
          "attention_probs_dropout_prob": 0.1,
          "gradient_checkpointing": false,
          "hidden_act": "gelu",
          "hidden_dropout_prob": 0.1,
          "hidden_size": 384,
          "initializer_range": 0.02,
          "intermediate_size": 1536,
          "layer_norm_eps": 1e-12,
          "max_position_embeddings": 512,
          "model_type": "bert",
          "num_attention_heads": 12,
          "num_hidden_layers": 6,
          "pad_token_id": 0,
          "position_embedding_type": "absolute",
          "transformers_version": "4.8.2",
          "type_vocab_size": 2,
          "use_cache": true,
          "vocab_size": 30522
        }
        """;

    [TestMethod]
    public void FromJson_HuggingFaceConfig_ReadsEveryField()
    {
        var config = BertConfig.FromJson(MiniLmConfigJson);
        Assert.AreEqual(30522, config.VocabSize);
        Assert.AreEqual(384, config.HiddenSize);
        Assert.AreEqual(6, config.NumHiddenLayers);
        Assert.AreEqual(12, config.NumAttentionHeads);
        Assert.AreEqual(32, config.HeadSize);
        Assert.AreEqual(1536, config.IntermediateSize);
        Assert.AreEqual("gelu", config.HiddenAct);
        Assert.AreEqual(1e-12, config.LayerNormEps);
        Assert.AreEqual(512, config.MaxPositionEmbeddings);
        Assert.AreEqual(2, config.TypeVocabSize);
        Assert.AreEqual(0.1, config.HiddenDropoutProb);
        Assert.AreEqual(0.1, config.AttentionProbsDropoutProb);
    }

    [TestMethod]
    public void ToJson_RoundTrip_KeepsKnownAndUnknownFields()
    {
        var config = BertConfig.FromJson(MiniLmConfigJson);
        using var original = JsonDocument.Parse(MiniLmConfigJson);
        using var written = JsonDocument.Parse(config.ToJson());
        foreach (var property in original.RootElement.EnumerateObject())
        {
            Assert.IsTrue(written.RootElement.TryGetProperty(property.Name, out var value), $"field {property.Name} lost");
            Assert.IsTrue(JsonElement.DeepEquals(property.Value, value), $"{property.Name}: {property.Value} != {value}");
        }

        var again = BertConfig.FromJson(config.ToJson());
        Assert.AreEqual(config.ToJson(), again.ToJson());
    }

    [TestMethod]
    [DataRow("\"hidden_size\": 384", "\"hidden_size\": 100", "hidden_size")]
    [DataRow("\"num_attention_heads\": 12", "\"num_attention_heads\": 0", "num_attention_heads")]
    [DataRow("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"mish\"", "hidden_act")]
    [DataRow("\"layer_norm_eps\": 1e-12", "\"layer_norm_eps\": 0", "layer_norm_eps")]
    [DataRow("\"hidden_dropout_prob\": 0.1", "\"hidden_dropout_prob\": 1.5", "hidden_dropout_prob")]
    [DataRow("\"position_embedding_type\": \"absolute\"", "\"position_embedding_type\": \"relative_key\"", "position_embedding_type")]
    [DataRow("\"vocab_size\": 30522", "\"vocab_size\": -1", "vocab_size")]
    [DataRow("\"model_type\": \"bert\"", "\"model_type\": \"roberta\"", "model_type")]
    public void FromJson_InvalidField_ThrowsNamingTheField(string original, string replacement, string field)
    {
        string json = MiniLmConfigJson.Replace(original, replacement, StringComparison.Ordinal);
        Assert.AreNotEqual(MiniLmConfigJson, json);
        var e = Assert.ThrowsExactly<ArgumentException>(() => BertConfig.FromJson(json));
        StringAssert.Contains(e.Message, field);
        Assert.AreEqual("json", e.ParamName);
    }

    [TestMethod]
    public void FromJson_MalformedJson_ThrowsArgumentException()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => BertConfig.FromJson("{ \"hidden_size\": "));
        Assert.AreEqual("json", e.ParamName);
    }

    [TestMethod]
    public void Load_InvalidFile_ThrowsNamingFileAndField()
    {
        string dir = TestData.NewTempDirectory();
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, MiniLmConfigJson.Replace("\"hidden_size\": 384", "\"hidden_size\": 385", StringComparison.Ordinal));
        var e = Assert.ThrowsExactly<InvalidDataException>(() => BertConfig.Load(path));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "hidden_size");
        Assert.ThrowsExactly<FileNotFoundException>(() => BertConfig.Load(Path.Combine(dir, "absent.json")));
    }

    [TestMethod]
    public void Save_WritesThroughTempFile_LeavesOnlyConfig()
    {
        string dir = TestData.NewTempDirectory();
        string path = Path.Combine(dir, "config.json");
        var config = TestData.TinyConfig();
        config.Save(path);
        config.Save(path);
        CollectionAssert.AreEqual(new[] { "config.json" }, Directory.GetFiles(dir).Select(Path.GetFileName).ToArray());
        Assert.AreEqual(config.ToJson(), BertConfig.Load(path).ToJson());
    }
}
