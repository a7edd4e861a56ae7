using System.Globalization;

namespace ImageLora;

/// <summary>The sample's options.</summary>
internal static class CommandLine
{
    /// <summary>Training images of the committed subset (<c>--make-subset</c>).</summary>
    public const int SubsetTrainCount = 5000;

    /// <summary>Test images of the committed subset: the first ones of the official test set.</summary>
    public const int SubsetTestCount = 1000;

    public const string Usage =
        "Options: --train N --validation N --test N --size S --epochs E --targets REGEX --threads T --rank R --alpha A --learning-rate X --head-epochs E " +
        "--head-learning-rate X --batch B --seed S --no-mlnet --data DIR --out DIR | --make-subset FULL_DATASET_DIR TARGET_DIR";

    public static RunSettings Parse(string[] args, out (string Source, string Target)? makeSubset)
    {
        var s = new RunSettings();
        makeSubset = null;
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"Option '{args[i]}' needs a value.");
            int Int() => int.Parse(Value(), CultureInfo.InvariantCulture);
            double Double() => double.Parse(Value(), CultureInfo.InvariantCulture);
            s = args[i] switch
            {
                "--train" => s with { TrainCount = Int() },
                "--validation" => s with { ValidationCount = Int() },
                "--test" => s with { TestCount = Int() },
                "--size" => s with { Size = Int() },
                "--epochs" => s with { Epochs = Int() },
                "--targets" => s with { TargetModules = Value() },
                "--threads" => s with { Threads = Int() },
                "--rank" => s with { Rank = Int() },
                "--alpha" => s with { Alpha = Double() },
                "--learning-rate" => s with { LearningRate = Double() },
                "--head-epochs" => s with { HeadEpochs = Int() },
                "--head-learning-rate" => s with { HeadLearningRate = Double() },
                "--batch" => s with { BatchSize = Int() },
                "--seed" => s with { Seed = Int() },
                "--no-mlnet" => s with { RunMlNetRecipe = false },
                "--data" => s with { DataDirectory = Value() },
                "--out" => s with { OutputDirectory = Value() },
                "--make-subset" => Set(out makeSubset, (Value(), Value()), s),
                _ => throw new ArgumentException($"Unknown argument '{args[i]}'."),
            };
        }

        if (s.Size < 32 || s.TrainCount < 1 || s.TestCount < 1 || s.Epochs < 1 || s.HeadEpochs < 1 || s.BatchSize < 1)
        {
            throw new ArgumentException("--size must be at least 32, and the counts, epochs and batch size positive.");
        }

        return s;
    }

    private static RunSettings Set(out (string, string)? target, (string, string) value, RunSettings s)
    {
        target = value;
        return s;
    }
}
